//! Where Redis is and how to reach it, read once from the settings: the
//! URL (or a cluster's seed nodes), and for `rediss://` the CA that signs
//! the server's certificate when it is not one of the system's roots. The
//! limiter, its probe and the invalidation stream make their clients here.

use std::fmt;

use redis::cluster::ClusterClientBuilder;
use redis::{Client, RedisResult, TlsCertificates};

#[derive(Clone)]
pub struct RedisTarget {
    /// One URL, or for a cluster one or more seed nodes separated by commas.
    urls: super::secret_url::RedisUrl,
    cluster: bool,
    /// PEM CA certificates for `rediss://` (`--redis-ca-cert`).
    root_cert: Option<Vec<u8>>,
}

impl RedisTarget {
    pub fn new(
        urls: super::secret_url::RedisUrl,
        cluster: bool,
        root_cert: Option<Vec<u8>>,
    ) -> RedisTarget {
        RedisTarget {
            urls,
            cluster,
            root_cert,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// A client of the single node (not for a cluster).
    pub fn client(&self) -> RedisResult<Client> {
        match self.certificates() {
            Some(certificates) => Client::build_with_tls(self.urls.expose(), certificates),
            None => Client::open(self.urls.expose()),
        }
    }

    /// A builder of a cluster client over the seed nodes.
    pub fn cluster_builder(&self) -> ClusterClientBuilder {
        let nodes: Vec<&str> = self.urls.expose().split(',').map(str::trim).collect();
        let builder = ClusterClientBuilder::new(nodes);
        match self.certificates() {
            Some(certificates) => builder.certs(certificates),
            None => builder,
        }
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.root_cert.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }
}

/// The URL with its password redacted.
impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.urls.fmt(f)
    }
}
