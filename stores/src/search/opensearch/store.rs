//! [`OpenSearchStore`]: the [`SearchStore`] over an OpenSearch cluster.

use super::OpenSearchOptions;
use super::mapping::{create_index_body, doc_id, product, tombstone};
use super::query;
use crate::search::cursor::{decode_plain, encode_plain};
use crate::search::doc::newest_per_key;
use crate::search::highlight::{highlight_all, snippet};
use crate::search::text::{QueryWord, query_words};
use crate::search::{
    ApplyOutcome, CursorProblem, Highlights, IndexOp, Rebuild, SearchDoc, SearchError, SearchHit,
    SearchRequest, SearchResults, SearchStore, StoreStats, StoredVersion,
};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use opensearch::OpenSearch;
use opensearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::http::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The adapter. Cheap to clone.
#[derive(Clone)]
pub struct OpenSearchStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: OpenSearch,
    options: OpenSearchOptions,
    last_commit: Mutex<Option<DateTime<Utc>>>,
    /// A rebuild of this process is running.
    rebuilding: AtomicBool,
}

/// What an OpenSearch cursor holds.
#[derive(Serialize, Deserialize)]
struct CursorPayload {
    /// Point-in-time id.
    p: String,
    /// Query fingerprint.
    f: u64,
    /// Sort values of the last hit.
    a: Vec<Value>,
}

impl OpenSearchStore {
    /// Connects and makes sure the alias points at an index (creating the first one).
    pub async fn connect(options: OpenSearchOptions) -> Result<OpenSearchStore, SearchError> {
        let client = client(&options.url, options.timeout)?;
        let store = OpenSearchStore {
            inner: Arc::new(Inner {
                client,
                options,
                last_commit: Mutex::new(None),
                rebuilding: AtomicBool::new(false),
            }),
        };
        store.inner.ensure_alias().await?;
        Ok(store)
    }

    /// Deletes every index of `prefix` (tests).
    pub async fn delete_all(url: &str, prefix: &str) -> Result<(), SearchError> {
        let client = client(url, std::time::Duration::from_secs(10))?;
        let inner = Inner {
            client,
            options: OpenSearchOptions::new(url, prefix),
            last_commit: Mutex::new(None),
            rebuilding: AtomicBool::new(false),
        };
        let path = format!("/{prefix}-products-*");
        inner.call(Method::Delete, &path, &[], None).await.map(|_| ())
    }
}

fn client(url: &str, timeout: std::time::Duration) -> Result<OpenSearch, SearchError> {
    let url = Url::parse(url).map_err(|e| SearchError::Internal(format!("bad OpenSearch url: {e}")))?;
    let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(timeout)
        .build()
        .map_err(|e| SearchError::Internal(format!("OpenSearch client: {e}")))?;
    Ok(OpenSearch::new(transport))
}

/// A failed response: overload and server errors are outages; a missing index too (it
/// was deleted under us); other client errors are bugs of this adapter.
fn status_error(status: StatusCode, body: &Value) -> SearchError {
    let reason = body["error"]["reason"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || status == StatusCode::NOT_FOUND
    {
        SearchError::Unavailable(format!("OpenSearch {status}: {reason}"))
    } else {
        SearchError::Internal(format!("OpenSearch {status}: {reason}"))
    }
}

impl Inner {
    /// One request; returns the status and the JSON body (any status).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        ndjson: bool,
    ) -> Result<(StatusCode, Value), SearchError> {
        let mut headers = HeaderMap::new();
        let content_type = if ndjson { "application/x-ndjson" } else { "application/json" };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let response = self
            .client
            .send(method, path, headers, Some(&query), body, Some(self.options.timeout))
            .await
            .map_err(|e| SearchError::Unavailable(format!("OpenSearch: {e}")))?;
        let status = response.status_code();
        let text = response.text().await.map_err(|e| SearchError::Unavailable(format!("OpenSearch: {e}")))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// A request that must succeed.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Value, SearchError> {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
        let (status, value) = self.send(method, path, query, bytes, false).await?;
        if status.is_success() { Ok(value) } else { Err(status_error(status, &value)) }
    }

    /// Deletes an index; one already gone is fine.
    async fn delete_index(&self, index: &str) -> Result<(), SearchError> {
        let (status, value) = self.send(Method::Delete, &format!("/{index}"), &[], None, false).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_error(status, &value))
        }
    }

    /// The indexes an alias points at (none if it does not exist).
    async fn alias_targets(&self, alias: &str) -> Result<Vec<String>, SearchError> {
        let (status, value) = self.send(Method::Get, &format!("/_alias/{alias}"), &[], None, false).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(status_error(status, &value));
        }
        Ok(value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default())
    }

    async fn ensure_alias(&self) -> Result<(), SearchError> {
        let alias = self.options.alias();
        if !self.alias_targets(&alias).await?.is_empty() {
            return Ok(());
        }
        let index = self.options.new_index_name();
        let body = create_index_body(&self.options, json!({ alias: { "is_write_index": true } }));
        self.call(Method::Put, &format!("/{index}"), &[], Some(body)).await?;
        Ok(())
    }

    /// Bulk-indexes `ops` into `target` with external versions. `wait` refreshes before
    /// returning. Returns the outcome; a 409 item is stale, a 400 item a bad document.
    async fn bulk(&self, target: &str, ops: &[IndexOp], wait: bool) -> Result<ApplyOutcome, SearchError> {
        let mut outcome = ApplyOutcome::default();
        if ops.is_empty() {
            return Ok(outcome);
        }
        let mut body = Vec::new();
        for op in ops {
            let action = json!({ "index": {
                "_index": target,
                "_id": doc_id(op.tenant(), op.sku()),
                "version": op.version(),
                "version_type": "external"
            } });
            let source = match op {
                IndexOp::Upsert(doc) => product(doc),
                IndexOp::Delete { tenant, sku, .. } => tombstone(tenant, sku),
            };
            for line in [action, source] {
                body.extend(serde_json::to_vec(&line).unwrap_or_default());
                body.push(b'\n');
            }
        }
        let refresh = if wait { "wait_for" } else { "false" };
        let (status, value) =
            self.send(Method::Post, "/_bulk", &[("refresh", refresh)], Some(body), true).await?;
        if !status.is_success() {
            return Err(status_error(status, &value));
        }
        let items = value["items"].as_array().cloned().unwrap_or_default();
        if items.len() != ops.len() {
            return Err(SearchError::Internal(format!(
                "bulk answered {} items for {} ops",
                items.len(),
                ops.len()
            )));
        }
        for (op, item) in ops.iter().zip(&items) {
            let item = &item["index"];
            let code = item["status"].as_u64().unwrap_or(0);
            match code {
                200..=299 => outcome.applied += 1,
                409 => outcome.stale += 1,
                400 => {
                    return Err(SearchError::BadDocument {
                        tenant: op.tenant().to_owned(),
                        sku: op.sku().to_owned(),
                        reason: item["error"]["reason"].as_str().unwrap_or("rejected").to_owned(),
                    });
                }
                _ => {
                    let status =
                        StatusCode::from_u16(code as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return Err(status_error(status, item));
                }
            }
        }
        Ok(outcome)
    }

    async fn apply(&self, ops: Vec<IndexOp>) -> Result<ApplyOutcome, SearchError> {
        for op in &ops {
            op.validate().map_err(|reason| SearchError::BadDocument {
                tenant: op.tenant().to_owned(),
                sku: op.sku().to_owned(),
                reason,
            })?;
        }
        let (ops, duplicates) = newest_per_key(ops);
        // A rebuild in progress (started by any node) gets every batch too. Its index is
        // read BEFORE the live write: read after, a swap in between (alias moved, `-next`
        // removed, the old index deleted) would leave this batch only in the deleted
        // index, acked and lost. A rebuild begun after this read reads the catalog after
        // it, so it holds this batch's changes already.
        let rebuilding = self.alias_targets(&self.options.next_alias()).await?;
        let mut outcome = self.bulk(&self.options.alias(), &ops, true).await?;
        outcome.stale += duplicates;
        for next in rebuilding {
            self.bulk(&next, &ops, false).await?;
        }
        *self.last_commit.lock().unwrap_or_else(|p| p.into_inner()) = Some(Utc::now());
        Ok(outcome)
    }

    async fn search(&self, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        request.validate()?;
        let fingerprint = request.fingerprint();
        let keep_alive = format!("{}s", self.options.cursor_keep_alive.as_secs().max(1));
        let (pit, after) = match &request.cursor {
            Some(cursor) => {
                let p: CursorPayload = decode_plain(cursor)?;
                if p.f != fingerprint {
                    return Err(SearchError::BadCursor(CursorProblem::OtherQuery));
                }
                (p.p, Some(p.a))
            }
            None => {
                let path = format!("/{}/_search/point_in_time", self.options.alias());
                let opened =
                    self.call(Method::Post, &path, &[("keep_alive", keep_alive.as_str())], None).await?;
                let pit = opened["pit_id"]
                    .as_str()
                    .ok_or_else(|| SearchError::Internal("no pit_id in the answer".into()))?
                    .to_owned();
                (pit, None)
            }
        };
        let per_page = request.per_page as usize;
        let mut body = json!({
            "pit": { "id": pit, "keep_alive": keep_alive },
            "size": per_page + 1,
            "track_total_hits": true,
            "query": query::query(request),
            "sort": query::sort(request.sort),
            "aggs": query::aggregations(),
            "_source": ["doc"]
        });
        if let Some(after) = after {
            body["search_after"] = Value::Array(after);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let (status, value) = self.send(Method::Post, "/_search", &[], Some(bytes), false).await?;
        if !status.is_success() {
            return Err(cursor_error(status, &value, request.cursor.is_some()));
        }
        let raw_hits = value["hits"]["hits"].as_array().cloned().unwrap_or_default();
        let has_more = raw_hits.len() > per_page;
        let words: Vec<QueryWord> = request.text().map(query_words).unwrap_or_default();
        let mut hits = Vec::with_capacity(per_page);
        let mut last_sort = None;
        for raw in raw_hits.iter().take(per_page) {
            let doc: SearchDoc = serde_json::from_value(raw["_source"]["doc"].clone())
                .map_err(|e| SearchError::Internal(format!("stored document: {e}")))?;
            hits.push(hit(doc, &words));
            last_sort = raw["sort"].as_array().cloned();
        }
        // The PIT outlives this page only if there is a next one.
        let next_pit = value["pit_id"].as_str().map(str::to_owned).unwrap_or(pit);
        let next_cursor = match (has_more, last_sort) {
            (true, Some(a)) => Some(encode_plain(&CursorPayload { p: next_pit, f: fingerprint, a })),
            _ => {
                let _ = self
                    .call(
                        Method::Delete,
                        "/_search/point_in_time",
                        &[],
                        Some(json!({ "pit_id": [next_pit] })),
                    )
                    .await;
                None
            }
        };
        Ok(SearchResults {
            total: value["hits"]["total"]["value"].as_u64().unwrap_or(0),
            hits,
            facets: query::facets(&value["aggregations"]),
            next_cursor,
        })
    }

    async fn version(&self, tenant: &str, sku: &str) -> Result<Option<StoredVersion>, SearchError> {
        let path = format!("/{}/_mget", self.options.alias());
        let body = json!({ "ids": [doc_id(tenant, sku)] });
        let value = self.call(Method::Post, &path, &[("_source_includes", "live")], Some(body)).await?;
        let doc = &value["docs"][0];
        if doc["found"].as_bool() != Some(true) {
            return Ok(None);
        }
        Ok(Some(StoredVersion {
            version: doc["_version"].as_i64().unwrap_or(0),
            deleted: doc["_source"]["live"].as_bool() == Some(false),
        }))
    }

    async fn count(&self, live: bool) -> Result<u64, SearchError> {
        let path = format!("/{}/_count", self.options.alias());
        let body = json!({ "query": { "term": { "live": live } } });
        let value = self.call(Method::Post, &path, &[], Some(body)).await?;
        Ok(value["count"].as_u64().unwrap_or(0))
    }

    /// One rebuild per process at a time; a `-next` index left by another process is a
    /// rebuild that died with it (the reindex job runs one at a time), so it is deleted
    /// and the new rebuild starts from scratch.
    async fn begin_rebuild(self: &Arc<Self>) -> Result<Box<dyn Rebuild>, SearchError> {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return Err(SearchError::RebuildRunning);
        }
        let started = self.start_rebuild().await;
        if started.is_err() {
            self.rebuilding.store(false, Ordering::Release);
        }
        started
    }

    async fn start_rebuild(self: &Arc<Self>) -> Result<Box<dyn Rebuild>, SearchError> {
        let next_alias = self.options.next_alias();
        for stale in self.alias_targets(&next_alias).await? {
            tracing::warn!(index = %stale, "deleting an unfinished search index rebuild");
            self.delete_index(&stale).await?;
        }
        let index = self.options.new_index_name();
        let body = create_index_body(&self.options, json!({ next_alias: {} }));
        self.call(Method::Put, &format!("/{index}"), &[], Some(body)).await?;
        Ok(Box::new(OpenSearchRebuild { inner: self.clone(), index, done: false }))
    }

    /// One `_aliases` call: the alias moves to `index`, `-next` goes; then the old
    /// indexes are deleted.
    async fn swap(&self, index: &str) -> Result<(), SearchError> {
        self.call(Method::Post, &format!("/{index}/_refresh"), &[], None).await?;
        let alias = self.options.alias();
        let old: Vec<String> = self.alias_targets(&alias).await?.into_iter().filter(|i| i != index).collect();
        let mut actions: Vec<Value> =
            old.iter().map(|i| json!({ "remove": { "index": i, "alias": alias } })).collect();
        actions.push(json!({ "add": { "index": index, "alias": alias, "is_write_index": true } }));
        actions.push(json!({ "remove": { "index": index, "alias": self.options.next_alias() } }));
        self.call(Method::Post, "/_aliases", &[], Some(json!({ "actions": actions }))).await?;
        for i in old {
            if let Err(e) = self.delete_index(&i).await {
                tracing::warn!(index = %i, error = %e, "could not delete the replaced search index");
            }
        }
        Ok(())
    }
}

/// An error answer to a search: with a cursor, a missing or unreadable point in time is
/// the cursor's fault (expired or forged), not an outage.
fn cursor_error(status: StatusCode, body: &Value, with_cursor: bool) -> SearchError {
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    let root = body["error"]["root_cause"][0]["type"].as_str().unwrap_or_default();
    let about_context = |t: &str| t.contains("search_context_missing") || t.contains("pit");
    if with_cursor && status == StatusCode::NOT_FOUND {
        return SearchError::BadCursor(CursorProblem::Expired);
    }
    if with_cursor
        && status.is_client_error()
        && (about_context(kind) || about_context(root) || kind == "illegal_argument_exception")
    {
        return SearchError::BadCursor(CursorProblem::Malformed);
    }
    status_error(status, body)
}

fn hit(doc: SearchDoc, words: &[QueryWord]) -> SearchHit {
    SearchHit {
        highlights: Highlights {
            title: highlight_all(&doc.title, words),
            description: snippet(&doc.description, words),
        },
        sku: doc.sku,
        title: doc.title,
        seller: doc.seller,
        category: doc.category,
        price_minor: doc.price_minor,
        currency: doc.currency,
        stock: doc.stock,
        updated_at: doc.updated_at,
        version: doc.version,
    }
}

impl SearchStore for OpenSearchStore {
    fn backend(&self) -> &'static str {
        "opensearch"
    }

    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        self.inner.apply(ops).boxed()
    }

    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        self.inner.search(request).boxed()
    }

    fn version<'a>(
        &'a self,
        tenant: &'a str,
        sku: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        self.inner.version(tenant, sku).boxed()
    }

    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        let inner = self.inner.clone();
        async move { inner.begin_rebuild().await }.boxed()
    }

    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        async move {
            let last_commit = *self.inner.last_commit.lock().unwrap_or_else(|p| p.into_inner());
            Ok(StoreStats {
                docs: self.inner.count(true).await?,
                tombstones: self.inner.count(false).await?,
                last_commit,
                rebuilding: !self.inner.alias_targets(&self.inner.options.next_alias()).await?.is_empty(),
            })
        }
        .boxed()
    }
}

struct OpenSearchRebuild {
    inner: Arc<Inner>,
    index: String,
    /// Finished or aborted: nothing to clean up on drop.
    done: bool,
}

impl Drop for OpenSearchRebuild {
    /// Dropped unfinished: delete the new index (with its `-next` alias) in the
    /// background (the next rebuild would delete it anyway).
    fn drop(&mut self) {
        self.inner.rebuilding.store(false, Ordering::Release);
        if self.done {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (inner, index) = (self.inner.clone(), self.index.clone());
            rt.spawn(async move {
                let _ = inner.delete_index(&index).await;
            });
        }
    }
}

impl Rebuild for OpenSearchRebuild {
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        async move {
            for op in &ops {
                op.validate().map_err(|reason| SearchError::BadDocument {
                    tenant: op.tenant().to_owned(),
                    sku: op.sku().to_owned(),
                    reason,
                })?;
            }
            let (ops, duplicates) = newest_per_key(ops);
            let mut outcome = self.inner.bulk(&self.index, &ops, false).await?;
            outcome.stale += duplicates;
            Ok(outcome)
        }
        .boxed()
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>> {
        self.done = true;
        async move { self.inner.swap(&self.index).await }.boxed()
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>> {
        self.done = true;
        async move { self.inner.delete_index(&self.index).await }.boxed()
    }
}
