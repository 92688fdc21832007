//! The OpenSearch adapter (in progress).
