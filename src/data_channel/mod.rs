//! The data channel: a QUIC connection that carries the protocol in place
//! of the ssh stream on long, lossy links (DESIGN.md, "Data channel").
//!
//! The far end opens a [`Listener`] for one session only: a UDP socket on a
//! port of the range asked for, a fresh self-signed certificate and a
//! one-time token. Its [`Offer`] (port, the certificate's SHA-256, the
//! token) travels to the near end over ssh. The near end [`connect`]s,
//! accepting exactly the certificate with that fingerprint, opens one
//! bidirectional stream and presents the token first; the far end compares
//! it in constant time, closes any connection that presents another (error
//! code [`REFUSED`]) and keeps waiting, and accepts one client only. The
//! near end does not wait for the far end's word on its token: it writes
//! on at once, and its first read takes that word (a refusal reads as an
//! error), which saves a round trip before the session's first request. Either
//! end then holds a [`Channel`]: a blocking reader and writer over that
//! stream, which the framed protocol uses as it uses ssh's stdin and stdout.
//!
//! quinn is asynchronous; each channel runs a small tokio runtime on a
//! thread of its own and the blocking halves wait on it. Nothing here
//! buffers beyond quinn's own windows (below), so memory stays bounded
//! however fast either side reads or writes.
//!
//! Never: listen before the peer asks, accept a second client, or trust a
//! certificate for anything but its fingerprint.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};
use rand::RngCore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

mod congestion;

/// Bytes of the one-time token.
pub const TOKEN_LEN: usize = 32;
/// Bytes of a certificate fingerprint (SHA-256).
pub const FINGERPRINT_LEN: usize = 32;
/// The application error code a refused client is closed with.
pub const REFUSED: u32 = 1;
/// The code of a normal end of the session.
const DONE: u32 = 0;
/// What the far end answers on the stream once it accepted the token.
const ACCEPTED: u8 = 0x5a;
/// The TLS application protocol both ends name.
const ALPN: &[u8] = b"snapsync-data/5";
/// The name the near end asks for; the pinned fingerprint is what counts.
const SERVER_NAME: &str = "snapsync";

/// Flow-control windows, sized for a 200 Mbit/s link with a 100 ms round
/// trip (2.5 MB in flight). The protocol runs on one ordered stream, which
/// also holds what arrived behind a lost packet until it is resent; at
/// about six times the bandwidth-delay product the window outlasts several
/// round trips of recovery before it caps the rate. Memory per channel is
/// at most this much received and this much unsent (plus what quinn keeps
/// for packets in flight) on each side.
pub const STREAM_WINDOW: u32 = 16 << 20;
/// The connection's receive window: the one stream's, and room for the
/// handshake's own stream.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW + (1 << 20);
/// The most the sender keeps of written but unacknowledged data.
pub const SEND_WINDOW: u64 = 16 << 20;
/// Without a packet for this long, the connection is lost.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keeps an idle continuous session's path (and NAT bindings) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The handshake's first guess of the round trip, before a sample, is
/// the measured one, within these bounds (quinn's own guess, without a
/// measure, is the upper bound: then a lost handshake packet waits about
/// a second for its resend).
const FIRST_RTT_MIN: Duration = Duration::from_millis(10);
const FIRST_RTT_MAX: Duration = Duration::from_millis(333);
/// The far end stops listening this long after it offered the channel,
/// whether or not the near end has come.
const LISTEN_LIMIT: Duration = Duration::from_secs(30);
/// A client must present its token within this time of its first packet.
const TOKEN_LIMIT: Duration = Duration::from_secs(10);
/// The closing handshake of a channel is waited for this long at most.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

/// `--udp-port PORT[-PORT]`: the UDP ports the far end may listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `PORT` or `FIRST-LAST` (1–65535, first ≤ last).
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let port = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "`{text}`: give a UDP port (1-65535) or a range FIRST-LAST"
                )),
                Ok(p) => Ok(p),
            }
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(text)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!(
                "`{text}`: the range's first port is above its last"
            ));
        }
        Ok(PortRange { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What the far end tells the near end over ssh: where it listens, which
/// certificate it will present, and the token to present to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub port: u16,
    #[serde(with = "serde_bytes")]
    pub fingerprint: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DataChannelError {
    #[error("cannot listen on UDP: {0}")]
    Bind(String),
    #[error("cannot set up QUIC: {0}")]
    Setup(String),
    #[error("no answer within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error("the far end refused the QUIC client: {0}")]
    Refused(String),
    #[error("QUIC connection failed: {0}")]
    Failed(String),
    #[error("the offer is malformed: {0}")]
    BadOffer(String),
}

/// The SHA-256 of a certificate's DER bytes.
pub fn fingerprint(cert: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, cert)
        .as_ref()
        .to_vec()
}

/// A tokio runtime on a thread of its own, for as long as one channel lives.
struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Runtime {
    fn start() -> Result<Arc<Runtime>, DataChannelError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DataChannelError::Setup(format!("cannot start a runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("snapsync-quic".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| DataChannelError::Setup(format!("cannot start a thread: {e}")))?;
        Ok(Arc::new(Runtime {
            handle,
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Runs `future` to its end from a plain thread (never the runtime's).
    fn wait<F: std::future::Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The transport settings both ends use: BBR, whose sending rate follows
/// the measured bottleneck instead of halving at each loss, and windows
/// sized for a long fat link. `first_rtt`: what the handshake takes the
/// round trip to be before it measures it (see [`first_rtt`]).
fn transport_config(server: bool, first_rtt: Option<Duration>) -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    if let Some(rtt) = first_rtt {
        config.initial_rtt(rtt.clamp(FIRST_RTT_MIN, FIRST_RTT_MAX));
    }
    config
        .congestion_controller_factory(Arc::new(congestion::CappedBbrConfig::default()))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("the idle timeout fits a varint"),
        ))
        .keep_alive_interval(Some(KEEP_ALIVE))
        // Only the near end opens a stream, and only one.
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(server)))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    config
}

/// The near end's guess of the round trip from how long the ssh login
/// took (`login`: from starting ssh to the far end's first answer): an
/// OpenSSH login is a dozen round trips or more (TCP, banners, key
/// exchange, service, authentication, channel, command) plus some CPU, so
/// a tenth of it is the round trip or a little more. Guessed short (a
/// multiplexed ssh connection logs in at once), the handshake's first
/// packet is resent early, a packet of 1,200 bytes; guessed long, a lost
/// one waits three times the guess.
pub fn first_rtt(login: Duration) -> Duration {
    (login / 10).clamp(FIRST_RTT_MIN, FIRST_RTT_MAX)
}

/// A fresh self-signed certificate and its key, for one session.
fn session_certificate(
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), DataChannelError> {
    let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| DataChannelError::Setup(format!("cannot make a certificate: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    Ok((made.cert.der().clone(), PrivateKeyDer::Pkcs8(key)))
}

fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, DataChannelError> {
    let setup = |e: &dyn std::fmt::Display| DataChannelError::Setup(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| setup(&e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| setup(&e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(true, None)));
    Ok(config)
}

/// Accepts exactly the certificate whose SHA-256 is `fingerprint`, and a
/// handshake signed with its key; no chain, no names, no dates.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if intermediates.is_empty() && fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    /// QUIC runs on TLS 1.3 only; a TLS 1.2 handshake never gets here.
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(
    pinned: &[u8],
    first_rtt: Option<Duration>,
) -> Result<quinn::ClientConfig, DataChannelError> {
    let setup = |e: &dyn std::fmt::Display| DataChannelError::Setup(e.to_string());
    let provider = provider();
    let verifier = PinnedCertificate {
        fingerprint: pinned.to_vec(),
        provider: Arc::clone(&provider),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(false, first_rtt)));
    Ok(config)
}

/// Binds a UDP socket on a port of `ports` (any free one when `None`), on
/// every address of the host: IPv6 and IPv4 where the host has IPv6, else
/// IPv4 only.
fn bind(ports: Option<PortRange>) -> Result<UdpSocket, DataChannelError> {
    let range = ports.unwrap_or(PortRange { first: 0, last: 0 });
    let mut last_error = None;
    for port in range.first..=range.last {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
        match UdpSocket::bind(v6).or_else(|e| match e.kind() {
            io::ErrorKind::AddrInUse => Err(e),
            _ => UdpSocket::bind(v4),
        }) {
            Ok(socket) => return Ok(socket),
            Err(e) => last_error = Some(e),
        }
    }
    let why = last_error.map_or_else(|| "no port to try".to_string(), |e| e.to_string());
    Err(DataChannelError::Bind(match ports {
        Some(range) => format!("no free UDP port in {range} ({why})"),
        None => why,
    }))
}

/// The client that presented the token, once one has.
#[derive(Default)]
struct Slot {
    /// A client presented the token: nobody else may have the channel.
    claimed: bool,
    channel: Option<(quinn::Connection, SendStream, RecvStream)>,
}

type SharedSlot = Arc<(Mutex<Slot>, Condvar)>;

/// The far end's side: listening for the one client of this session.
pub struct Listener {
    offer: Offer,
    slot: SharedSlot,
    endpoint: quinn::Endpoint,
    runtime: Arc<Runtime>,
}

impl Listener {
    /// Binds the socket, makes the certificate and the token, and starts
    /// waiting for the client (for at most 30 s).
    pub fn open(ports: Option<PortRange>) -> Result<Listener, DataChannelError> {
        let socket = bind(ports)?;
        let port = socket
            .local_addr()
            .map_err(|e| DataChannelError::Bind(e.to_string()))?
            .port();
        let (cert, key) = session_certificate()?;
        let mut token = vec![0u8; TOKEN_LEN];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let offer = Offer {
            port,
            fingerprint: fingerprint(&cert),
            token: token.clone(),
        };
        let config = server_config(cert, key)?;
        let runtime = Runtime::start()?;
        let endpoint = {
            let _inside = runtime.handle.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(config.clone()),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(|e| DataChannelError::Bind(e.to_string()))?
        };
        let slot: SharedSlot = Arc::default();
        runtime
            .handle
            .spawn(listen(endpoint.clone(), config, token, Arc::clone(&slot)));
        Ok(Listener {
            offer,
            slot,
            endpoint,
            runtime,
        })
    }

    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The channel of the client that presented the token, waiting up to
    /// `limit` for it.
    pub fn accepted(self, limit: Duration) -> Result<Channel, DataChannelError> {
        let deadline = Instant::now() + limit;
        let (lock, ready) = &*self.slot;
        let mut slot = lock.lock().unwrap();
        loop {
            if let Some((connection, send, recv)) = slot.channel.take() {
                drop(slot);
                return Ok(Channel::new(
                    connection,
                    send,
                    recv,
                    self.endpoint.clone(),
                    Arc::clone(&self.runtime),
                    Acceptance::Given,
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DataChannelError::TimedOut(limit));
            }
            slot = ready.wait_timeout(slot, left).unwrap().0;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Nobody else may connect; a channel already handed out lives on.
        self.endpoint.set_server_config(None);
    }
}

/// Accepts connections until one presents the token, or for at most
/// [`LISTEN_LIMIT`]; then stops listening. The offer went out as the
/// listener opened: the client's first packet comes about a round trip
/// after, which is the handshake's first guess of it (`config`, the
/// server's settings, with that guess).
async fn listen(
    endpoint: quinn::Endpoint,
    config: quinn::ServerConfig,
    token: Vec<u8>,
    slot: SharedSlot,
) {
    let opened = tokio::time::Instant::now();
    let deadline = opened + LISTEN_LIMIT;
    let token = Arc::new(token);
    while let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, endpoint.accept()).await {
        if slot.0.lock().unwrap().claimed {
            incoming.refuse();
            continue;
        }
        let mut config = config.clone();
        config.transport_config(Arc::new(transport_config(true, Some(opened.elapsed()))));
        let connecting = match incoming.accept_with(Arc::new(config)) {
            Ok(connecting) => connecting,
            // quinn has closed it.
            Err(_) => continue,
        };
        tokio::spawn(check_client(
            connecting,
            Arc::clone(&token),
            Arc::clone(&slot),
            endpoint.clone(),
        ));
    }
    endpoint.set_server_config(None);
}

/// Lets one client in if it presents the token first on its stream; any
/// other is closed with [`REFUSED`].
async fn check_client(
    connecting: quinn::Connecting,
    token: Arc<Vec<u8>>,
    slot: SharedSlot,
    endpoint: quinn::Endpoint,
) {
    let checked = tokio::time::timeout(TOKEN_LIMIT, async {
        let connection = connecting.await.ok()?;
        let (send, mut recv) = match connection.accept_bi().await {
            Ok(stream) => stream,
            Err(_) => return Some((connection, None)),
        };
        let mut presented = [0u8; TOKEN_LEN];
        let read = recv.read_exact(&mut presented).await;
        let valid = read.is_ok() && bool::from(presented[..].ct_eq(&token[..]));
        Some((connection, valid.then_some((send, recv))))
    })
    .await;
    let Ok(Some((connection, streams))) = checked else {
        // No handshake in time, or none at all: quinn closes it.
        return;
    };
    let Some((mut send, recv)) = streams else {
        connection.close(VarInt::from_u32(REFUSED), b"wrong token");
        return;
    };
    {
        let mut held = slot.0.lock().unwrap();
        if held.claimed {
            drop(held);
            connection.close(VarInt::from_u32(REFUSED), b"the channel is taken");
            return;
        }
        held.claimed = true;
    }
    // One client per session: nobody else gets as far as a handshake.
    endpoint.set_server_config(None);
    if send.write_all(&[ACCEPTED]).await.is_err() {
        return;
    }
    let (lock, ready) = &*slot;
    lock.lock().unwrap().channel = Some((connection, send, recv));
    ready.notify_all();
}

/// The near end's side: connects to the far end at any of `addresses`
/// (tried at once; the first that gets through wins), accepting only the
/// offered certificate, and presents the token. Gives up after `limit`.
/// `first_rtt`: the round trip as guessed before the handshake measures
/// it (see [`first_rtt`]); quinn's 333 ms when `None`.
pub fn connect(
    addresses: &[SocketAddr],
    offer: &Offer,
    limit: Duration,
    first_rtt: Option<Duration>,
) -> Result<Channel, DataChannelError> {
    if offer.fingerprint.len() != FINGERPRINT_LEN || offer.token.len() != TOKEN_LEN {
        return Err(DataChannelError::BadOffer(format!(
            "a fingerprint of {} bytes and a token of {} bytes",
            offer.fingerprint.len(),
            offer.token.len()
        )));
    }
    if addresses.is_empty() {
        return Err(DataChannelError::Failed("no address to connect to".into()));
    }
    let runtime = Runtime::start()?;
    let config = client_config(&offer.fingerprint, first_rtt)?;
    let endpoint = {
        let _inside = runtime.handle.enter();
        let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
        let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
        let mut endpoint = quinn::Endpoint::client(v6)
            .or_else(|_| quinn::Endpoint::client(v4))
            .map_err(|e| DataChannelError::Bind(e.to_string()))?;
        endpoint.set_default_client_config(config);
        endpoint
    };
    let local_v6 = endpoint.local_addr().is_ok_and(|a| a.is_ipv6());
    let targets: Vec<SocketAddr> = addresses
        .iter()
        .map(|a| SocketAddr::new(a.ip(), offer.port))
        .filter(|a| local_v6 || a.is_ipv4())
        .collect();
    let token = offer.token.clone();
    let attempt = {
        let endpoint = endpoint.clone();
        async move {
            let mut attempts = tokio::task::JoinSet::new();
            for target in targets {
                attempts.spawn(present_token(endpoint.clone(), target, token.clone()));
            }
            let mut errors = Vec::new();
            while let Some(done) = attempts.join_next().await {
                match done {
                    Ok(Ok(channel)) => return Ok(channel),
                    Ok(Err(e)) => errors.push(e),
                    Err(e) => errors.push(DataChannelError::Failed(e.to_string())),
                }
            }
            // A refusal says more than a failure to reach some address.
            let refusal = errors
                .iter()
                .position(|e| matches!(e, DataChannelError::Refused(_)));
            Err(match refusal {
                Some(i) => errors.swap_remove(i),
                None => errors
                    .pop()
                    .unwrap_or(DataChannelError::Failed("no address to try".into())),
            })
        }
    };
    let result = runtime.wait(async move { tokio::time::timeout(limit, attempt).await });
    match result {
        Ok(Ok((connection, send, recv))) => Ok(Channel::new(
            connection,
            send,
            recv,
            endpoint,
            Arc::clone(&runtime),
            Acceptance::Awaited,
        )),
        Ok(Err(e)) => {
            endpoint.close(VarInt::from_u32(DONE), b"");
            Err(e)
        }
        Err(_) => {
            endpoint.close(VarInt::from_u32(DONE), b"");
            Err(DataChannelError::TimedOut(limit))
        }
    }
}

/// One attempt: handshake (which checks the certificate), stream, and the
/// token; the far end's word on it is read with the first data.
async fn present_token(
    endpoint: quinn::Endpoint,
    target: SocketAddr,
    token: Vec<u8>,
) -> Result<(quinn::Connection, SendStream, RecvStream), DataChannelError> {
    let failed = |e: &dyn std::fmt::Display| DataChannelError::Failed(format!("{target}: {e}"));
    let connection = endpoint
        .connect(target, SERVER_NAME)
        .map_err(|e| failed(&e))?
        .await
        .map_err(|e| match e {
            // Our own verifier turned the far end's certificate down.
            ConnectionError::TransportError(ref t) if t.to_string().contains("certificate") => {
                DataChannelError::Refused(format!(
                    "{target} presented another certificate than the one offered over ssh ({e})"
                ))
            }
            other => failed(&other),
        })?;
    let (mut send, recv) = connection.open_bi().await.map_err(|e| failed(&e))?;
    send.write_all(&token).await.map_err(|e| failed(&e))?;
    Ok((connection, send, recv))
}

/// Whether the far end's word on the token is still to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acceptance {
    /// The far end's side, or a near end that has read it.
    Given,
    /// The near end's first read takes it.
    Awaited,
}

/// An open data channel: one stream each way, until [`Channel::split`]
/// hands out its halves.
pub struct Channel {
    connection: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    endpoint: quinn::Endpoint,
    runtime: Arc<Runtime>,
    acceptance: Acceptance,
}

impl Channel {
    fn new(
        connection: quinn::Connection,
        send: SendStream,
        recv: RecvStream,
        endpoint: quinn::Endpoint,
        runtime: Arc<Runtime>,
        acceptance: Acceptance,
    ) -> Channel {
        Channel {
            connection,
            send,
            recv,
            endpoint,
            runtime,
            acceptance,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The blocking halves, and the guard that closes the connection when
    /// dropped (the halves then end too).
    pub fn split(self) -> (ChannelReader, ChannelWriter, ChannelGuard) {
        let reader = ChannelReader {
            recv: self.recv,
            runtime: Arc::clone(&self.runtime),
            acceptance: self.acceptance,
        };
        let writer = ChannelWriter {
            send: self.send,
            runtime: Arc::clone(&self.runtime),
        };
        let guard = ChannelGuard {
            closer: ChannelCloser(self.connection),
            endpoint: self.endpoint,
            runtime: self.runtime,
            linger: true,
        };
        (reader, writer, guard)
    }
}

/// Reads the stream, waiting on the channel's runtime. The end of the
/// stream, or of the connection by either side's normal close, reads as
/// the end of input. The near end's first read takes the far end's word
/// on the token first: a refusal is an error.
pub struct ChannelReader {
    recv: RecvStream,
    runtime: Arc<Runtime>,
    acceptance: Acceptance,
}

impl ChannelReader {
    fn take_acceptance(&mut self) -> io::Result<()> {
        let mut answer = [0u8; 1];
        match self.runtime.wait(self.recv.read_exact(&mut answer)) {
            Ok(()) if answer[0] == ACCEPTED => {
                self.acceptance = Acceptance::Given;
                Ok(())
            }
            Ok(()) => Err(io::Error::other(
                "the far end answered the token with something else; is it the same snapsync version?",
            )),
            Err(quinn::ReadExactError::ReadError(ReadError::ConnectionLost(
                ConnectionError::ApplicationClosed(close),
            ))) if close.error_code == VarInt::from_u32(REFUSED) => {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the far end refused this client on the data channel: {}",
                        String::from_utf8_lossy(&close.reason)
                    ),
                ))
            }
            // Closed before a word: the end of input, as for any read.
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof))
            }
            Err(quinn::ReadExactError::ReadError(ReadError::ConnectionLost(e)))
                if closed_normally(&e) =>
            {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof))
            }
            Err(quinn::ReadExactError::ReadError(e)) => Err(io::Error::other(e)),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.acceptance == Acceptance::Awaited {
            match self.take_acceptance() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        match self.runtime.wait(self.recv.read(buf)) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Ok(0),
            Err(ReadError::ConnectionLost(e)) if closed_normally(&e) => Ok(0),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

fn closed_normally(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::LocallyClosed => true,
        ConnectionError::ApplicationClosed(close) => close.error_code == VarInt::from_u32(DONE),
        _ => false,
    }
}

/// Writes the stream; a write waits while the send window is full. Dropping
/// it ends the stream.
pub struct ChannelWriter {
    send: SendStream,
    runtime: Arc<Runtime>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.runtime.wait(self.send.write(buf)) {
            Ok(n) => Ok(n),
            Err(WriteError::ConnectionLost(e)) if closed_normally(&e) => {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.runtime.wait(self.send.write_all(buf)) {
            Ok(()) => Ok(()),
            Err(WriteError::ConnectionLost(e)) if closed_normally(&e) => {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// quinn sends what it was given as fast as the path allows.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send.finish();
    }
}

/// Closes a channel's connection from any thread (the near end when the
/// ssh connection ends, the far end when its ssh input does).
#[derive(Clone)]
pub struct ChannelCloser(quinn::Connection);

impl ChannelCloser {
    pub fn close(&self) {
        self.0.close(VarInt::from_u32(DONE), b"session over");
    }
}

/// Keeps the channel's connection and runtime; closes the connection when
/// dropped, waiting briefly for the peer to hear of it.
pub struct ChannelGuard {
    closer: ChannelCloser,
    endpoint: quinn::Endpoint,
    runtime: Arc<Runtime>,
    /// Whether dropping waits (briefly) for the peer to hear of the close.
    linger: bool,
}

impl ChannelGuard {
    pub fn closer(&self) -> ChannelCloser {
        self.closer.clone()
    }

    /// Whether dropping the guard waits for the peer to hear of the close
    /// (the default); not when the peer is known to have gone.
    pub fn linger(&mut self, linger: bool) {
        self.linger = linger;
    }

    /// The connection's round trip time, as QUIC measures it.
    pub fn rtt(&self) -> Duration {
        self.closer.0.rtt()
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.closer.close();
        self.endpoint.close(VarInt::from_u32(DONE), b"");
        if !self.linger {
            return;
        }
        let endpoint = self.endpoint.clone();
        let _ = self
            .runtime
            .wait(async move { tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_round_trip_is_a_tenth_of_the_login_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(first_rtt(ms(1500)), ms(150));
        // A multiplexed login, or a LAN: never below the floor.
        assert_eq!(first_rtt(ms(20)), FIRST_RTT_MIN);
        // A slow login (a password typed, a satellite): quinn's own guess.
        assert_eq!(first_rtt(Duration::from_secs(30)), FIRST_RTT_MAX);
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            PortRange::parse("40000-40010"),
            Ok(PortRange {
                first: 40000,
                last: 40010
            })
        );
        assert_eq!(
            PortRange::parse("5000"),
            Ok(PortRange {
                first: 5000,
                last: 5000
            })
        );
        for bad in ["0", "70000", "10-5", "a", "1-", "-3", ""] {
            assert!(PortRange::parse(bad).is_err(), "{bad} parsed");
        }
        assert_eq!(PortRange::parse("7-9").unwrap().to_string(), "7-9");
        assert!(PortRange::parse("7-9").unwrap().contains(8));
    }

    fn localhost(port: u16) -> Vec<SocketAddr> {
        vec![SocketAddr::from(([127, 0, 0, 1], port))]
    }

    fn echo_once(channel: Channel) {
        let (mut reader, mut writer, _guard) = channel.split();
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        writer.write_all(&buf).unwrap();
        writer.flush().unwrap();
        // Wait for the peer to finish before the guard closes.
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
    }

    #[test]
    fn the_pinned_client_with_the_token_gets_a_channel() {
        let listener = Listener::open(None).unwrap();
        let offer = listener.offer().clone();
        let far = std::thread::spawn(move || {
            echo_once(listener.accepted(Duration::from_secs(10)).unwrap())
        });
        let channel =
            connect(&localhost(offer.port), &offer, Duration::from_secs(5), None).unwrap();
        let (mut reader, mut writer, guard) = channel.split();
        writer.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        reader.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        drop(writer);
        far.join().unwrap();
        drop(guard);
    }

    #[test]
    fn wrong_token_and_wrong_certificate_are_refused_and_the_listener_waits_on() {
        let listener = Listener::open(None).unwrap();
        let offer = listener.offer().clone();
        let far = std::thread::spawn(move || {
            echo_once(listener.accepted(Duration::from_secs(20)).unwrap())
        });

        // The near end writes on without waiting: the refusal is its
        // first read.
        let mut wrong_token = offer.clone();
        wrong_token.token = vec![7u8; TOKEN_LEN];
        let channel = connect(
            &localhost(offer.port),
            &wrong_token,
            Duration::from_secs(5),
            None,
        )
        .expect("the handshake itself succeeds");
        let (mut reader, _writer, _guard) = channel.split();
        let refused = reader
            .read(&mut [0u8; 5])
            .expect_err("a wrong token got a channel");
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied, "{refused}");
        assert!(refused.to_string().contains("token"), "{refused}");

        let mut wrong_cert = offer.clone();
        wrong_cert.fingerprint = vec![0u8; FINGERPRINT_LEN];
        match connect(
            &localhost(offer.port),
            &wrong_cert,
            Duration::from_secs(5),
            None,
        ) {
            Err(DataChannelError::Refused(why)) => {
                assert!(why.contains("certificate"), "{why}")
            }
            Err(other) => panic!("not refused: {other}"),
            Ok(_) => panic!("another certificate was accepted"),
        }

        let channel =
            connect(&localhost(offer.port), &offer, Duration::from_secs(5), None).unwrap();
        let (mut reader, mut writer, _guard) = channel.split();
        writer.write_all(b"again").unwrap();
        let mut back = [0u8; 5];
        reader.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"again");
        drop(writer);
        far.join().unwrap();
    }

    #[test]
    fn nothing_listening_times_out() {
        // A port just freed: nothing answers there.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let offer = Offer {
            port,
            fingerprint: vec![0; FINGERPRINT_LEN],
            token: vec![0; TOKEN_LEN],
        };
        let started = Instant::now();
        let result = connect(&localhost(port), &offer, Duration::from_millis(500), None);
        assert!(matches!(result, Err(DataChannelError::TimedOut(_))));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
