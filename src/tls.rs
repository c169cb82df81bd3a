//! TLS on the gRPC and HTTP listeners, with rustls (ring).
//!
//! The acceptor is ours, not tonic's `ServerTlsConfig`: tonic's takes its
//! certificate once, and an operator rotating a certificate must not have to
//! restart. [`ServerTls`] reads the certificate, key and client CA again when
//! their files change; a pair that does not load (half-written, mismatched)
//! leaves the one in force and the log says why. New connections get the
//! configuration in force when they arrive; open ones keep theirs.
//!
//! With a client CA the gRPC listener refuses, at the handshake, a client
//! without a certificate that CA signed (mutual TLS). The HTTP listener also
//! serves the console, GitHub's leak reports and `/metrics`, whose callers
//! have no certificate: it verifies a certificate when one is presented and
//! accepts a connection without one, so what needs a certificate there
//! (the data plane with `--data-plane-auth mtls`) asks for it per call.
//!
//! [`incoming`] does the handshakes off the accept loop; [`identity`] tells
//! who a verified client certificate names.

pub mod identity;
pub mod incoming;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{ServerConfig, WebPkiClientVerifier};

pub use identity::ClientCertificate;
pub use incoming::TlsIncoming;

/// How often the files are read again to see whether they changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The files of the listeners' TLS, as the settings name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates: mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Why the files do not make a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path} does not read as PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("the certificate {cert} and the key {key} do not go together: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// Which listener a configuration is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// HTTP/2 only; with a client CA, a client certificate is required.
    Grpc,
    /// HTTP/2 or HTTP/1.1; with a client CA, a certificate is verified when
    /// presented.
    Http,
}

/// The two server configurations one set of files makes.
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The listeners' TLS configuration in force, reloaded when its files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<Configs>>,
    /// Digest of the files' contents at the last look, good or not: a change
    /// is a difference from it (a digest, so the key is not kept twice).
    last_seen: Mutex<Seen>,
}

/// What one look at the files found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Contents([u8; 32]),
    Unreadable(String),
}

/// What one look at the files found.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed but do not load; the configuration in force stays.
    Rejected(TlsError),
}

impl ServerTls {
    /// Loads the files once; an error here refuses the start.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let contents = read(&files)?;
        let configs = build(&files, &contents)?;
        Ok(ServerTls {
            last_seen: Mutex::new(Seen::Contents(contents.digest())),
            current: RwLock::new(Arc::new(configs)),
            files,
        })
    }

    /// The configuration in force for `listener`.
    pub fn config(&self, listener: Listener) -> Arc<ServerConfig> {
        let configs = self.current.read().expect("TLS lock poisoned").clone();
        match listener {
            Listener::Grpc => configs.grpc.clone(),
            Listener::Http => configs.http.clone(),
        }
    }

    /// Whether clients are asked for certificates (a client CA is set).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again and, if they changed and load, puts them in force.
    pub fn reload_if_changed(&self) -> Reload {
        let contents = match read(&self.files) {
            Ok(contents) => contents,
            Err(error) => return self.rejected(Seen::Unreadable(error.to_string()), error),
        };
        let seen = Seen::Contents(contents.digest());
        if *self.last_seen.lock().expect("TLS lock poisoned") == seen {
            return Reload::Unchanged;
        }
        match build(&self.files, &contents) {
            Ok(configs) => {
                *self.current.write().expect("TLS lock poisoned") = Arc::new(configs);
                *self.last_seen.lock().expect("TLS lock poisoned") = seen;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded; new connections use it");
                ::metrics::counter!("apikeyd_tls_reloads_total", "result" => "reloaded")
                    .increment(1);
                Reload::Reloaded
            }
            Err(error) => self.rejected(seen, error),
        }
    }

    /// Logs a bad change once (until what is seen changes again).
    fn rejected(&self, seen: Seen, error: TlsError) -> Reload {
        let mut last_seen = self.last_seen.lock().expect("TLS lock poisoned");
        if *last_seen != seen {
            tracing::warn!(%error, "TLS files changed but do not load; keeping the certificate in force");
            ::metrics::counter!("apikeyd_tls_reloads_total", "result" => "rejected").increment(1);
            *last_seen = seen;
        }
        Reload::Rejected(error)
    }

    /// Looks at the files every [`RELOAD_INTERVAL`], forever.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let tls = self.clone();
            // File reads block; keep them off the async workers.
            let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
        }
    }
}

/// The raw contents of the files.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [&self.cert, &self.key] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        if let Some(ca) = &self.client_ca {
            hasher.update(ca);
        }
        hasher.finalize().into()
    }
}

fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok(Contents {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        client_ca: files.client_ca.as_deref().map(read).transpose()?,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The ring provider, named rather than taken from the process default, so
/// that another crate's choice can never change ours.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles, contents: &Contents) -> Result<Configs, TlsError> {
    let chain = certificates(&files.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| TlsError::NoKey {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let (required, optional) = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => client_verifiers(path, pem)?,
        _ => (
            WebPkiClientVerifier::no_client_auth(),
            WebPkiClientVerifier::no_client_auth(),
        ),
    };
    let config = |verifier: Verifier, alpn: &[&[u8]]| {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain.clone(), key.clone_key())
            })
            .map_err(|e| TlsError::Pair {
                cert: files.cert.clone(),
                key: files.key.clone(),
                reason: e.to_string(),
            })?;
        // gRPC clients (grpc-go, so grpcurl) insist on ALPN's h2.
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok::<_, TlsError>(Arc::new(config))
    };
    Ok(Configs {
        grpc: config(required, &[b"h2"])?,
        http: config(optional, &[b"h2", b"http/1.1"])?,
    })
}

type Verifier = Arc<dyn ClientCertVerifier>;

/// Verifiers against the client CA: one that requires a certificate, one
/// that verifies a certificate only when presented.
fn client_verifiers(path: &Path, pem: &[u8]) -> Result<(Verifier, Verifier), TlsError> {
    let problem = |reason: String| TlsError::ClientCa {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots.add(cert).map_err(|e| problem(e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let required = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| problem(e.to_string()))?;
    let optional = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| problem(e.to_string()))?;
    Ok((required, optional))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn self_signed(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: None,
        }
    }

    fn write(files: &TlsFiles, pair: &Pair) {
        std::fs::write(&files.cert, &pair.cert).unwrap();
        std::fs::write(&files.key, &pair.key).unwrap();
    }

    #[test]
    fn a_changed_pair_is_reloaded_and_a_bad_one_keeps_the_pair_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        write(&files, &self_signed("one.test"));
        let tls = ServerTls::load(files.clone()).unwrap();
        let first = Arc::as_ptr(&tls.config(Listener::Grpc));
        assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));

        // A certificate with another certificate's key: refused, old one stays.
        let (one, two) = (self_signed("one.test"), self_signed("two.test"));
        std::fs::write(&files.cert, &two.cert).unwrap();
        std::fs::write(&files.key, &one.key).unwrap();
        let Reload::Rejected(error) = tls.reload_if_changed() else {
            panic!("a mismatched pair is rejected")
        };
        assert!(error.to_string().contains("do not go together"), "{error}");
        assert_eq!(Arc::as_ptr(&tls.config(Listener::Grpc)), first);
        assert!(
            matches!(tls.reload_if_changed(), Reload::Unchanged),
            "a bad change is reported once"
        );

        // The key arrives: the new pair is put in force.
        std::fs::write(&files.key, &two.key).unwrap();
        assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
        assert_ne!(Arc::as_ptr(&tls.config(Listener::Grpc)), first);

        // A removed key file: refused, named.
        std::fs::remove_file(&files.key).unwrap();
        let Reload::Rejected(error) = tls.reload_if_changed() else {
            panic!("a missing key is rejected")
        };
        assert!(error.to_string().contains("tls.key"), "{error}");
    }

    #[test]
    fn files_that_are_not_pem_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let pair = self_signed("one.test");
        std::fs::write(&files.cert, "not a certificate").unwrap();
        std::fs::write(&files.key, &pair.key).unwrap();
        let error = ServerTls::load(files.clone()).err().unwrap().to_string();
        assert!(
            error.contains("tls.crt holds no PEM certificate"),
            "{error}"
        );

        std::fs::write(&files.cert, &pair.cert).unwrap();
        std::fs::write(&files.key, &pair.cert).unwrap();
        let error = ServerTls::load(files.clone()).err().unwrap().to_string();
        assert!(
            error.contains("tls.key holds no PEM private key"),
            "{error}"
        );
    }

    #[test]
    fn alpn_offers_h2_to_grpc_and_both_versions_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        write(&files, &self_signed("one.test"));
        let tls = ServerTls::load(files).unwrap();
        assert_eq!(tls.config(Listener::Grpc).alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(
            tls.config(Listener::Http).alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(!tls.mutual());
    }
}
