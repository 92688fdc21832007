//! The answer every handler gives a message of a newer schema than this release reads
//! (it waits for the upgrade: [`Handler::too_new`](souk_topologies::runtime::Handler::too_new)).

use souk_pipelines::Message;
use souk_topologies::runtime::Delivery;

/// Why `d` waits, when it is an `M` of a newer version than this release reads.
pub(crate) fn too_new<M: Message>(d: &Delivery) -> Option<String> {
    d.newer_version::<M>()
        .map(|v| format!("{} v{v} is newer than this release reads (v{})", M::SCHEMA, M::VERSION))
}
