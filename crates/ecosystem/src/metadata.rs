use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use proxyd_cache::{Cache, Document};

use crate::{Upstream, UpstreamError, UpstreamResponse};

/// How a document was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within the TTL; upstream was not asked.
    Fresh,
    /// Upstream confirmed it unchanged (304).
    Revalidated,
    /// Upstream sent a new body.
    Fetched,
    /// Upstream failed; this is the last copy seen.
    Stale,
}

/// Upstream metadata documents: fresh for `ttl`, then revalidated; persisted in the cache
/// index; served stale when the upstream fails.
#[derive(Debug)]
pub struct MetadataCache {
    cache: Arc<Cache>,
    upstream: Upstream,
    ttl: Duration,
    memory: Mutex<HashMap<String, Arc<Document>>>,
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MetadataCache {
    /// Documents kept fresh for `ttl`.
    pub fn new(cache: Arc<Cache>, upstream: Upstream, ttl: Duration) -> Self {
        Self {
            cache,
            upstream,
            ttl,
            memory: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    /// The freshness TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The upstream client.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The cache (artifacts and documents).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    fn remembered(&self, key: &str) -> Option<Arc<Document>> {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, key: &str, doc: Arc<Document>) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), doc);
    }

    /// The document `key` if it is in memory and fresh; never asks upstream.
    pub fn fresh(&self, key: &str) -> Option<Arc<Document>> {
        self.remembered(key).filter(|doc| self.is_fresh(doc))
    }

    fn is_fresh(&self, doc: &Document) -> bool {
        doc.fetched_at.elapsed().is_ok_and(|age| age < self.ttl)
    }

    async fn known(&self, key: &str) -> Option<Arc<Document>> {
        if let Some(doc) = self.remembered(key) {
            return Some(doc);
        }
        match self.cache.document(key).await {
            Ok(Some(doc)) => {
                let doc = Arc::new(doc);
                self.remember(key, doc.clone());
                Some(doc)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(key, error = %err, "could not read a stored document");
                None
            }
        }
    }

    /// The document `key`, fetched from `url` when missing or stale (or always, with
    /// `force`). Concurrent refreshes of one key make one upstream request.
    pub async fn get(
        &self,
        ecosystem: &'static str,
        key: &str,
        url: &str,
        accept: &str,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), UpstreamError> {
        if !force
            && let Some(doc) = self.remembered(key)
            && self.is_fresh(&doc)
        {
            return Ok((doc, Freshness::Fresh));
        }
        let lock = {
            let mut map = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        let started = SystemTime::now();
        let _one_refresh = lock.lock().await;
        let known = self.known(key).await;
        if let Some(doc) = &known {
            // Fresh, or refreshed by the request this one waited for.
            if (!force && self.is_fresh(doc)) || doc.fetched_at >= started {
                return Ok((doc.clone(), Freshness::Fresh));
            }
        }
        let etag = known.as_ref().and_then(|d| d.etag.as_deref());
        let last_modified = known.as_ref().and_then(|d| d.last_modified.as_deref());
        let result = self
            .upstream
            .document(ecosystem, url, accept, etag, last_modified)
            .await;
        let (doc, freshness) = match (result, known) {
            (Ok(UpstreamResponse::NotModified), Some(old)) => {
                let mut doc = (*old).clone();
                doc.fetched_at = SystemTime::now();
                (Arc::new(doc), Freshness::Revalidated)
            }
            (Ok(UpstreamResponse::NotModified), None) => {
                return Err(UpstreamError::Status {
                    status: 304,
                    url: url.to_owned(),
                });
            }
            (
                Ok(UpstreamResponse::Body {
                    body,
                    etag,
                    last_modified,
                    content_type,
                }),
                _,
            ) => {
                let doc = Document {
                    body,
                    etag,
                    last_modified,
                    content_type,
                    fetched_at: SystemTime::now(),
                };
                (Arc::new(doc), Freshness::Fetched)
            }
            (Err(err @ UpstreamError::NotFound(_)), _) => return Err(err),
            (Err(err), Some(old)) => {
                tracing::warn!(key, error = %err, "upstream failed; serving the last copy seen");
                return Ok((old, Freshness::Stale));
            }
            (Err(err), None) => return Err(err),
        };
        if let Err(err) = self.cache.put_document(key, (*doc).clone()).await {
            tracing::error!(key, error = %err, "could not store a document");
        }
        self.remember(key, doc.clone());
        Ok((doc, freshness))
    }
}
