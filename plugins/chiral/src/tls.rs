//! libp2p's TLS 1.3 security upgrade (`/tls/1.0.0`, the libp2p TLS spec) with AES-GCM offered
//! first. `libp2p::tls` lists ChaCha20-Poly1305 first and a server follows the client's order,
//! so two libp2p nodes always settle on ChaCha20 in software; this CPU has AES instructions,
//! where AES-GCM costs a fraction of it. The server side is libp2p's own (it follows our order);
//! the client side is the same handshake (a self-signed certificate carrying the libp2p
//! extension, verified by `libp2p::tls::certificate::parse`, client authentication, no SNI,
//! ALPN `libp2p`) with the cipher suites reordered. Interoperates with plain `libp2p::tls` in
//! both directions (it just picks ChaCha20 when the other side dials).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use futures::{future::BoxFuture, AsyncRead, AsyncWrite, FutureExt as _};
use libp2p::{
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity,
    tls::{certificate, TlsStream, UpgradeError},
    PeerId,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    CertificateError, DigitallySignedStruct, SignatureScheme,
};

/// The security upgrade: libp2p's TLS, AES-GCM first when this node dials.
#[derive(Clone)]
pub struct Config {
    server: libp2p::tls::Config,
    client: Arc<rustls::ClientConfig>,
}

impl Config {
    pub fn new(key: &identity::Keypair) -> Result<Self, UpgradeError> {
        let (cert, private_key) = certificate::generate(key)?;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let setup = |e: rustls::Error| UpgradeError::ClientUpgrade(std::io::Error::other(e));
        // Not `with_client_auth_cert`: its key check parses the certificate with webpki, which
        // refuses the libp2p extension (critical, unknown to it).
        let signing_key = provider.key_provider.load_private_key(private_key).map_err(setup)?;
        let certified = rustls::sign::CertifiedKey::new(vec![cert], signing_key);
        let mut client = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier))
            .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        client.alpn_protocols = vec![b"libp2p".to_vec()];
        Ok(Self { server: libp2p::tls::Config::new(key)?, client: Arc::new(client) })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/tls/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        self.server.upgrade_inbound(socket, info)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec: no Server Name Indication.
            let name = ServerName::IpAddress(rustls::pki_types::IpAddr::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(UpgradeError::ClientUpgrade)?;
            let peer_id = match stream.get_ref().1.peer_certificates() {
                Some([cert]) => certificate::parse(cert)?.peer_id(),
                _ => {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "not exactly one certificate");
                    return Err(UpgradeError::ClientUpgrade(e));
                }
            };
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}

/// The libp2p TLS rules for the server's certificate: exactly one, self-signed, with a valid
/// libp2p extension (all checked by `certificate::parse`), TLS 1.3 signatures by its key.
#[derive(Debug)]
struct Verifier;

fn bad_certificate(_: impl std::fmt::Debug) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadSignature)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General("libp2p TLS: one certificate only".into()));
        }
        certificate::parse(end_entity).map_err(bad_certificate)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("libp2p TLS: TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)
            .map_err(bad_certificate)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(bad_certificate)?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}
