//! The client's view of the cluster: brokers, partition leaders and a connection per broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Connection;
use crate::error::ClientError;

/// What we know about one topic from the last metadata response that named it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicMeta {
    /// Leader node id per partition (-1 when the partition has no leader right now).
    pub(crate) leaders: BTreeMap<i32, i32>,
}

#[derive(Default)]
struct State {
    /// node id → "host:port"
    brokers: HashMap<i32, String>,
    controller_id: Option<i32>,
    topics: HashMap<String, TopicMeta>,
}

/// Shared metadata cache and broker connection pool.
pub(crate) struct Cluster {
    bootstrap: String,
    request_timeout: Duration,
    state: Mutex<State>,
    /// One connection per node id; the bootstrap connection is kept under key `None`.
    conns: tokio::sync::Mutex<HashMap<Option<i32>, Connection>>,
}

impl Cluster {
    /// Connects to the bootstrap broker and loads the broker list.
    pub(crate) async fn connect(
        bootstrap: &str,
        request_timeout: Duration,
    ) -> Result<Arc<Cluster>, ClientError> {
        let cluster = Arc::new(Cluster {
            bootstrap: bootstrap.to_owned(),
            request_timeout,
            state: Mutex::default(),
            conns: tokio::sync::Mutex::default(),
        });
        cluster.refresh(&[]).await?;
        Ok(cluster)
    }

    /// A cluster that has not connected anywhere (unit tests of code that holds one).
    #[cfg(test)]
    pub(crate) fn offline(bootstrap: &str) -> Arc<Cluster> {
        Arc::new(Cluster {
            bootstrap: bootstrap.to_owned(),
            request_timeout: Duration::from_secs(1),
            state: Mutex::default(),
            conns: tokio::sync::Mutex::default(),
        })
    }

    fn no_bootstrap(&self) -> ClientError {
        ClientError::NotFound {
            what: format!("a bootstrap address in {:?}", self.bootstrap),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to any broker: an open broker connection, else the bootstrap address.
    pub(crate) async fn any_connection(&self) -> Result<Connection, ClientError> {
        {
            let conns = self.conns.lock().await;
            if let Some(c) = conns.values().find(|c| !c.is_closed()) {
                return Ok(c.clone());
            }
        }
        // The bootstrap list ("host:port[,host:port…]", like Kafka's bootstrap.servers):
        // the first that answers.
        let mut first_error = None;
        for addr in bootstrap_addrs(&self.bootstrap) {
            match self.connection_to(None, addr).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Every bootstrap address is down: try any broker we learned about.
        let brokers: Vec<(i32, String)> = self
            .state()
            .brokers
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        for (id, addr) in brokers {
            if let Ok(c) = self.connection_to(Some(id), &addr).await {
                return Ok(c);
            }
        }
        Err(first_error.unwrap_or_else(|| self.no_bootstrap()))
    }

    /// The pooled connection to broker `node_id`, opened (or reopened) as needed.
    pub(crate) async fn broker(&self, node_id: i32) -> Result<Connection, ClientError> {
        let addr = self.state().brokers.get(&node_id).cloned();
        let addr = match addr {
            Some(a) => a,
            None => {
                self.refresh(&[]).await?;
                self.state().brokers.get(&node_id).cloned().ok_or_else(|| {
                    ClientError::NotFound {
                        what: format!("broker {node_id}"),
                    }
                })?
            }
        };
        self.connection_to(Some(node_id), &addr).await
    }

    /// The controller's connection if metadata names one, else any connection.
    pub(crate) async fn controller(&self) -> Result<Connection, ClientError> {
        let id = self.state().controller_id;
        match id {
            Some(id) => match self.broker(id).await {
                Ok(c) => Ok(c),
                Err(_) => self.any_connection().await,
            },
            None => self.any_connection().await,
        }
    }

    async fn connection_to(&self, key: Option<i32>, addr: &str) -> Result<Connection, ClientError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&key) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Connection::connect_with_timeout(addr, self.request_timeout).await?;
        conns.insert(key, c.clone());
        Ok(c)
    }

    /// Sends a Metadata request (`topics: None` = all topics) and returns the raw response.
    ///
    /// The cache is updated from the response as a side effect.
    pub(crate) async fn fetch_metadata(
        &self,
        topics: Option<&[String]>,
    ) -> Result<MetadataResponse, ClientError> {
        let conn = self.any_connection().await?;
        let version = conn.version_for::<MetadataRequest>()?;
        let mut req = MetadataRequest::default();
        req.topics = match topics {
            // v0 has no "all topics" null; an empty list means all there.
            None if version == 0 => Some(Vec::new()),
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    })
                    .collect(),
            ),
        };
        if version >= 4 {
            req.allow_auto_topic_creation = false;
        }
        let resp = conn.send_versioned(req, version).await?;
        self.update(&resp);
        Ok(resp)
    }

    /// Refreshes brokers and the leaders of `topics` (an empty slice refreshes only brokers).
    pub(crate) async fn refresh(&self, topics: &[String]) -> Result<(), ClientError> {
        self.fetch_metadata(Some(topics)).await.map(|_| ())
    }

    fn update(&self, resp: &MetadataResponse) {
        let mut st = self.state();
        if !resp.brokers.is_empty() {
            st.brokers = resp
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                .collect();
        }
        st.controller_id = (resp.controller_id.0 >= 0).then_some(resp.controller_id.0);
        for t in &resp.topics {
            let Some(name) = t.name.as_ref() else {
                continue;
            };
            if t.error_code != 0 {
                st.topics.remove(name.as_str());
                continue;
            }
            let leaders = t
                .partitions
                .iter()
                .map(|p| {
                    let leader = if p.error_code == 0 || p.error_code == 9 {
                        p.leader_id.0
                    } else {
                        -1
                    };
                    (p.partition_index, leader)
                })
                .collect();
            st.topics
                .insert(name.as_str().to_owned(), TopicMeta { leaders });
        }
    }

    /// Node ids of every known broker, sorted.
    pub(crate) fn broker_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.state().brokers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Cached metadata of `topic`, if any.
    pub(crate) fn topic(&self, topic: &str) -> Option<TopicMeta> {
        self.state().topics.get(topic).cloned()
    }

    /// Cached partition count of `topic`, without cloning its metadata.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<i32> {
        self.state()
            .topics
            .get(topic)
            .and_then(|t| i32::try_from(t.leaders.len()).ok())
    }

    /// Forgets `topic` so the next lookup refreshes it.
    pub(crate) fn invalidate(&self, topic: &str) {
        self.state().topics.remove(topic);
    }

    /// The topic's metadata, refreshing once if it is not cached.
    pub(crate) async fn topic_or_refresh(&self, topic: &str) -> Result<TopicMeta, ClientError> {
        if let Some(t) = self.topic(topic) {
            return Ok(t);
        }
        let resp = self.fetch_metadata(Some(&[topic.to_owned()])).await?;
        if let Some(t) = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(topic))
        {
            if t.error_code != 0 {
                return Err(ClientError::kafka(t.error_code, Some(topic)));
            }
        }
        self.topic(topic)
            .ok_or_else(|| ClientError::kafka(3, Some(topic)))
    }

    /// The leader of `topic`/`partition` from cache (refreshing if unknown); -1 means none.
    pub(crate) async fn leader(&self, topic: &str, partition: i32) -> Result<i32, ClientError> {
        let meta = self.topic_or_refresh(topic).await?;
        meta.leaders
            .get(&partition)
            .copied()
            .ok_or_else(|| ClientError::kafka(3, Some(&format!("{topic}/{partition}"))))
    }
}

/// The addresses of a bootstrap list: comma-separated, blanks ignored.
fn bootstrap_addrs(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty())
}

#[cfg(test)]
mod bootstrap_tests {
    use super::bootstrap_addrs;

    #[test]
    fn bootstrap_lists_split_on_commas() {
        let addrs: Vec<&str> = bootstrap_addrs(" a:1, b:2,,c:3 ").collect();
        assert_eq!(addrs, ["a:1", "b:2", "c:3"]);
        assert_eq!(bootstrap_addrs("").count(), 0);
    }
}
