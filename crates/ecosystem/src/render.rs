use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use proxyd_cache::Document;

use crate::{DocumentReply, Freshness, Refusal, Reply};

/// Replies rendered from upstream documents, kept until the document changes, so a metadata
/// hit costs a map lookup instead of a parse and a rewrite.
#[derive(Debug)]
pub struct RenderCache<K> {
    rendered: Mutex<HashMap<K, (Arc<Document>, DocumentReply)>>,
}

impl<K> Default for RenderCache<K> {
    fn default() -> Self {
        Self {
            rendered: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> RenderCache<K> {
    /// The reply for `key` rendered from `doc`, rendering it only when `doc` is not the
    /// document the cached reply came from.
    pub fn get_or_render(
        &self,
        key: K,
        doc: &Arc<Document>,
        render: impl FnOnce(&Document) -> Result<DocumentReply, String>,
    ) -> Result<DocumentReply, String> {
        if let Some((source, reply)) = self
            .rendered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && (Arc::ptr_eq(source, doc) || source.body == doc.body)
        {
            return Ok(reply.clone());
        }
        let reply = render(doc)?;
        self.rendered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (doc.clone(), reply.clone()));
        Ok(reply)
    }

    /// [`RenderCache::get_or_render`] as a reply: marked stale when `freshness` says the
    /// upstream failed, a 502 when rendering fails.
    pub fn reply(
        &self,
        key: K,
        doc: &Arc<Document>,
        freshness: Freshness,
        render: impl FnOnce(&Document) -> Result<DocumentReply, String>,
    ) -> Reply {
        match self.get_or_render(key, doc, render) {
            Ok(mut reply) => {
                reply.stale = freshness == Freshness::Stale;
                Reply::Document(reply)
            }
            Err(err) => Reply::Error(Refusal::upstream(err)),
        }
    }
}
