//! Who a verified client certificate names: its subject and subject
//! alternative names, as the audit trail records the caller's TLS identity.
//!
//! The certificate is the one rustls verified against the client CA at the
//! handshake; nothing here verifies anything.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// The end-entity certificate a client presented and the server verified.
#[derive(Clone, Debug)]
pub struct ClientCertificate(Arc<CertificateDer<'static>>);

impl ClientCertificate {
    /// The client certificate of the connection a request came on: put
    /// there by tonic (the gRPC listener) or by the HTTP listener.
    pub fn of(extensions: &http::Extensions) -> Option<ClientCertificate> {
        if let Some(found) = extensions.get::<ClientCertificate>() {
            return Some(found.clone());
        }
        let certs = extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()?
            .peer_certs()?;
        ClientCertificate::from_chain(&certs)
    }

    /// The client's certificate: the first of the chain it presented.
    pub fn from_chain(chain: &[CertificateDer<'static>]) -> Option<ClientCertificate> {
        chain
            .first()
            .map(|leaf| ClientCertificate(Arc::new(leaf.clone())))
    }

    /// `CN=billing,O=Acme; DNS:billing.internal, URI:spiffe://…`: the subject,
    /// then the alternative names that say who (DNS, URI, e-mail, IP).
    pub fn identity(&self) -> String {
        let Ok(cert) = x509_cert::Certificate::from_der(self.0.as_ref()) else {
            return "<unreadable certificate>".to_owned();
        };
        let subject = cert.tbs_certificate.subject.to_string();
        let names: Vec<String> = cert
            .tbs_certificate
            .get::<SubjectAltName>()
            .ok()
            .flatten()
            .map(|(_, san)| san.0.iter().filter_map(general_name).collect())
            .unwrap_or_default();
        match (subject.is_empty(), names.is_empty()) {
            (_, true) => subject,
            (true, false) => names.join(", "),
            (false, false) => format!("{subject}; {}", names.join(", ")),
        }
    }
}

fn general_name(name: &GeneralName) -> Option<String> {
    match name {
        GeneralName::DnsName(dns) => Some(format!("DNS:{dns}")),
        GeneralName::UniformResourceIdentifier(uri) => Some(format!("URI:{uri}")),
        GeneralName::Rfc822Name(email) => Some(format!("email:{email}")),
        GeneralName::IpAddress(ip) => {
            let bytes = ip.as_bytes();
            let ip: std::net::IpAddr = match bytes.len() {
                4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
                16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
                _ => return None,
            };
            Some(format!("IP:{ip}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_subject_then_the_alternative_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "billing.internal".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-service");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://acme/billing".try_into().unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();

        let identity = ClientCertificate::from_chain(&[cert.der().clone()])
            .unwrap()
            .identity();

        assert_eq!(
            identity,
            "CN=billing-service; DNS:billing.internal, IP:127.0.0.1, URI:spiffe://acme/billing"
        );
    }

    #[test]
    fn a_request_without_a_tls_connection_has_no_certificate() {
        assert!(ClientCertificate::of(&http::Extensions::new()).is_none());
        assert!(ClientCertificate::from_chain(&[]).is_none());
    }
}
