//! A scripted SQL Server for the tests: enough of [MS-TDS] to stand in for the SSO database's server,
//! on 127.0.0.1 port 0, in-process.
//!
//! Built: PRELOGIN; TDS 7.4 encryption negotiated at pre-login (the TLS handshake carried inside
//! PRELOGIN packets, then TLS for the whole session, or for the login packet only); TDS 8.0 strict
//! (TLS first, ALPN `tds/8.0`); LOGIN7 with SQL authentication; SQL batches and RPC (`sp_executesql`)
//! with NVARCHAR (also PLP), VARCHAR, INT and BIT parameters; COLMETADATA / ROW / DONE / DONEPROC /
//! DONEINPROC / RETURNSTATUS / INFO / ERROR / ENVCHANGE / LOGINACK tokens. The statements it
//! understands are a fixed script (the SSO database's `SSOX_GlobalInfo`, `BACKUP DATABASE`, `RESTORE
//! VERIFYONLY`, msdb's backup history, `SELECT @@VERSION`, `SET …`); anything else is answered with an
//! error that says so. Faults: any SQL Server error number, a hang mid-response, a dropped connection,
//! a delay, a damaged backup file, a backup without its msdb row.
//!
//! Not built: MARS, SSPI / integrated logins, transactions, TDS before 7.4 beyond answering the
//! client's version, column types other than INT, BIGINT, BIT and NVARCHAR in results.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// The server's certificate chain and key, PEM.
pub struct TlsIdentity {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

/// Whether the server refuses clients that do not encrypt (SQL Server's "Force Encryption").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEncryption {
    Required,
    Optional,
}

/// A database of the server; `global_info` is the content of `dbo.SSOX_GlobalInfo.gi_SecretServer`
/// (None: the table does not exist).
#[derive(Debug, Clone)]
pub struct FakeDatabase {
    pub name: String,
    pub global_info: Option<Vec<String>>,
}

pub struct FakeSqlConfig {
    /// None: the server cannot encrypt (it answers ENCRYPT_NOT_SUP).
    pub tls: Option<TlsIdentity>,
    pub encryption: ServerEncryption,
    /// SQL logins: (user, password).
    pub logins: Vec<(String, String)>,
    pub databases: Vec<FakeDatabase>,
}

/// What a statement (or a login) is, for faults and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Login,
    SecretServer,
    LastBackupId,
    Backup,
    Verify,
    History,
    /// `SELECT @@VERSION`, `SELECT 1`, `SET …` and statements it has no script for.
    Other,
    /// Matches every statement, not a login (for faults).
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this SQL Server error (for Backup and Verify followed by 3013, as SQL Server does).
    Error(i32),
    /// Send the first part of the answer without the end-of-message bit, then nothing until the
    /// client goes away.
    Hang,
    /// Send the first part of the answer, then close the connection (Login: close instead of
    /// answering the pre-login).
    Drop,
    /// Answer normally, this much later.
    Delay(Duration),
    /// Backup: write a damaged file (RESTORE VERIFYONLY then fails with 3189).
    Corrupt,
    /// Backup: report success but record no msdb row.
    NoHistory,
}

/// One statement handled.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: SystemTime,
    pub op: Op,
    pub text: String,
    pub params: Vec<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// TDS 8.0: TLS before anything else.
    Strict,
    /// TDS 7.x, the whole session in TLS.
    Tls,
    /// TDS 7.x, only the login packet in TLS.
    LoginOnly,
    Plain,
}

/// One login attempt.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub mode: ConnMode,
    pub user: String,
    pub database: String,
    pub tds_version: u32,
    pub logged_in: bool,
}

/// A row of `msdb.dbo.backupset` (joined with its media family's file).
#[derive(Debug, Clone)]
pub struct BackupRow {
    pub backup_set_id: i32,
    pub database_name: String,
    pub backup_size: i64,
    pub finished: String,
    pub is_copy_only: bool,
    pub has_backup_checksums: bool,
    pub physical_device_name: String,
}

struct State {
    logins: Vec<(String, String)>,
    databases: Vec<FakeDatabase>,
    faults: Vec<(Op, Fault, usize)>,
    log: Vec<Logged>,
    connections: Vec<ConnInfo>,
    backups: Vec<BackupRow>,
    next_id: i32,
}

struct Shared {
    state: Mutex<State>,
    strict_tls: Option<TlsAcceptor>,
    prelogin_tls: Option<TlsAcceptor>,
    encryption: ServerEncryption,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next fault for `op`, if one was injected.
    fn fault(&self, op: Op) -> Option<Fault> {
        self.take_fault(op, |_| true)
    }

    /// Takes the next fault for `op` that `wanted` accepts; `Op::Any` stands for every statement,
    /// not a login.
    fn take_fault(&self, op: Op, wanted: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut state = self.state();
        let i = state.faults.iter().position(|(o, f, n)| {
            (*o == op || (*o == Op::Any && op != Op::Login)) && *n > 0 && wanted(f)
        })?;
        let fault = state.faults[i].1.clone();
        state.faults[i].2 -= 1;
        if state.faults[i].2 == 0 {
            state.faults.remove(i);
        }
        Some(fault)
    }
}

/// The scripted server; dropping it stops the listener and every connection.
pub struct FakeSqlServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSqlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn acceptor(identity: &TlsIdentity, strict: bool) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(identity.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate chain PEM")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).context("the key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // TDS 7.x carries the handshake in PRELOGIN packets: TLS 1.2 only, as SQL Server before TDS 8.
    let versions: &[&rustls::SupportedProtocolVersion] = if strict {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.send_tls13_tickets = 0;
    if strict {
        config.alpn_protocols = vec![b"tds/8.0".to_vec()];
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl FakeSqlServer {
    pub async fn start(config: FakeSqlConfig) -> Result<FakeSqlServer> {
        let (strict_tls, prelogin_tls) = match &config.tls {
            Some(identity) => (
                Some(acceptor(identity, true)?),
                Some(acceptor(identity, false)?),
            ),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                logins: config.logins,
                databases: config.databases,
                faults: Vec::new(),
                log: Vec::new(),
                connections: Vec::new(),
                backups: Vec::new(),
                next_id: 40,
            }),
            strict_tls,
            prelogin_tls,
            encryption: config.encryption,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                // Dropped with the accept loop: every connection ends with the server.
                let mut connections = JoinSet::new();
                while let Ok((socket, _)) = listener.accept().await {
                    let _ = socket.set_nodelay(true);
                    connections.spawn(serve(socket, shared.clone()));
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Ok(FakeSqlServer { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A one-shot fault for the next statement (or login) of that kind.
    pub fn inject(&self, op: Op, fault: Fault) {
        self.inject_times(op, fault, 1);
    }

    pub fn inject_times(&self, op: Op, fault: Fault, n: usize) {
        self.shared.state().faults.push((op, fault, n));
    }

    pub fn log(&self) -> Vec<Logged> {
        self.shared.state().log.clone()
    }

    pub fn connections(&self) -> Vec<ConnInfo> {
        self.shared.state().connections.clone()
    }

    pub fn backups(&self) -> Vec<BackupRow> {
        self.shared.state().backups.clone()
    }

    /// Changes what `dbo.SSOX_GlobalInfo` of `db` holds (None: no such table).
    pub fn set_global_info(&self, db: &str, rows: Option<Vec<String>>) {
        let mut state = self.shared.state();
        if let Some(d) = state
            .databases
            .iter_mut()
            .find(|d| d.name.eq_ignore_ascii_case(db))
        {
            d.global_info = rows;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

const BATCH: u8 = 0x01;
const RPC: u8 = 0x03;
const REPLY: u8 = 0x04;
const ATTENTION: u8 = 0x06;
const LOGIN7: u8 = 0x10;
const PRELOGIN: u8 = 0x12;
const EOM: u8 = 0x01;
const MAX_MESSAGE: usize = 16 << 20;

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// One message (its packets joined); None at a clean end of the stream.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut kind = None;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        match s.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && kind.is_none() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if length < 8 {
            return Err(bad(format!("a packet of length {length}")));
        }
        let mut body = vec![0u8; length - 8];
        s.read_exact(&mut body).await?;
        kind.get_or_insert(header[0]);
        payload.extend_from_slice(&body);
        if payload.len() > MAX_MESSAGE {
            return Err(bad("a message over 16 MiB"));
        }
        if header[1] & EOM != 0 {
            return Ok(kind.map(|k| (k, payload)));
        }
    }
}

/// `payload` as packets of at most `packet_size` bytes; the last one has EOM when `complete`.
fn packets(kind: u8, payload: &[u8], packet_size: usize, complete: bool) -> Vec<u8> {
    let room = packet_size.max(512) - 8;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[]]
    } else {
        payload.chunks(room).collect()
    };
    let mut out = Vec::with_capacity(payload.len() + 8 * chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let length = u16::try_from(chunk.len() + 8).unwrap_or(u16::MAX);
        out.extend_from_slice(&[
            kind,
            if last && complete { EOM } else { 0 },
            (length >> 8) as u8,
            length as u8,
            0,
            0,
            (i as u8).wrapping_add(1),
            0,
        ]);
        out.extend_from_slice(chunk);
    }
    out
}

/// While the TDS 7.x TLS handshake runs, its records travel inside PRELOGIN packets: this stream
/// unwraps what it reads and wraps what it writes, then passes everything through.
struct HandshakeFraming<S> {
    inner: S,
    framing: bool,
    header: [u8; 8],
    header_got: usize,
    left: usize,
    out: Vec<u8>,
    pending: Vec<u8>,
    sent: usize,
}

impl<S> HandshakeFraming<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            framing: true,
            header: [0; 8],
            header_got: 0,
            left: 0,
            out: Vec::new(),
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HandshakeFraming<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.framing {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        while this.left == 0 {
            let mut header = ReadBuf::new(&mut this.header[this.header_got..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut header))?;
            let n = header.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.header_got += n;
            if this.header_got == 8 {
                this.header_got = 0;
                let length = usize::from(u16::from_be_bytes([this.header[2], this.header[3]]));
                if this.header[0] != PRELOGIN || length < 8 {
                    return Poll::Ready(Err(bad("expected a PRELOGIN packet with TLS")));
                }
                this.left = length - 8;
            }
        }
        let mut tmp = vec![0u8; this.left.min(buf.remaining())];
        let mut part = ReadBuf::new(&mut tmp);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.put_slice(&tmp[..n]);
        this.left -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandshakeFraming<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.framing {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() && !this.out.is_empty() {
            this.pending = packets(PRELOGIN, &this.out, 4096, true);
            this.out.clear();
            this.sent = 0;
        }
        while this.sent < this.pending.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.pending[this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.sent += n;
        }
        this.pending.clear();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const ENCRYPT_OFF: u8 = 0;
const ENCRYPT_ON: u8 = 1;
const ENCRYPT_NOT_SUP: u8 = 2;
const ENCRYPT_REQ: u8 = 3;

async fn serve(socket: TcpStream, shared: Arc<Shared>) {
    if let Err(e) = connection(socket, &shared).await {
        // A client that goes away is not the server's problem; anything else shows in test output.
        if !matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
        ) {
            eprintln!("fake SQL server: {e}");
        }
    }
}

async fn connection(socket: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let mut first = [0u8; 1];
    if socket.peek(&mut first).await? == 0 {
        return Ok(());
    }
    if first[0] == 0x16 {
        // TDS 8.0 strict: a TLS ClientHello before anything else.
        let Some(tls) = &shared.strict_tls else {
            return Ok(());
        };
        let mut stream = tls.accept(socket).await?;
        let Some((PRELOGIN, request)) = read_message(&mut stream).await? else {
            return Err(bad("expected PRELOGIN inside strict TLS"));
        };
        let _ = prelogin_encryption(&request);
        if shared
            .take_fault(Op::Login, |f| *f == Fault::Drop)
            .is_some()
        {
            return Ok(());
        }
        stream
            .write_all(&packets(
                REPLY,
                &prelogin_answer(ENCRYPT_NOT_SUP),
                4096,
                true,
            ))
            .await?;
        let Some((LOGIN7, login)) = read_message(&mut stream).await? else {
            return Err(bad("expected LOGIN7"));
        };
        return session(Box::new(stream), login, ConnMode::Strict, shared).await;
    }
    let mut socket = socket;
    let Some((PRELOGIN, request)) = read_message(&mut socket).await? else {
        return Err(bad("expected PRELOGIN"));
    };
    let client = prelogin_encryption(&request)?;
    let can = shared.prelogin_tls.is_some();
    let (answer, mode) = match (client, can) {
        (ENCRYPT_NOT_SUP, _) if shared.encryption == ServerEncryption::Required => {
            (ENCRYPT_REQ, None)
        }
        (ENCRYPT_NOT_SUP, _) | (_, false) => (ENCRYPT_NOT_SUP, Some(ConnMode::Plain)),
        (ENCRYPT_OFF, true) if shared.encryption == ServerEncryption::Optional => {
            (ENCRYPT_OFF, Some(ConnMode::LoginOnly))
        }
        (_, true) => (ENCRYPT_ON, Some(ConnMode::Tls)),
    };
    if shared
        .take_fault(Op::Login, |f| *f == Fault::Drop)
        .is_some()
    {
        return Ok(());
    }
    socket
        .write_all(&packets(REPLY, &prelogin_answer(answer), 4096, true))
        .await?;
    let Some(mode) = mode else {
        // The client cannot encrypt and the server insists: it gives up.
        return Ok(());
    };
    if mode == ConnMode::Plain {
        // A client that wanted TLS from a server without it gives up here, or starts a handshake
        // that is not a login: either way the connection ends.
        return match read_message(&mut socket).await? {
            Some((LOGIN7, login)) => session(Box::new(socket), login, mode, shared).await,
            _ => Ok(()),
        };
    }
    let Some(tls) = &shared.prelogin_tls else {
        return Ok(());
    };
    let mut stream = tls.accept(HandshakeFraming::new(socket)).await?;
    stream.get_mut().0.framing = false;
    let Some((LOGIN7, login)) = read_message(&mut stream).await? else {
        return Err(bad("expected LOGIN7"));
    };
    if mode == ConnMode::LoginOnly {
        // Only the login was encrypted: the rest goes on the bare socket.
        let (framing, _) = stream.into_inner();
        return session(Box::new(framing.inner), login, mode, shared).await;
    }
    session(Box::new(stream), login, mode, shared).await
}

/// The client's ENCRYPTION option (ENCRYPT_NOT_SUP when absent).
fn prelogin_encryption(request: &[u8]) -> io::Result<u8> {
    let mut i = 0;
    while let Some(&token) = request.get(i) {
        if token == 0xFF {
            break;
        }
        let field = request
            .get(i + 1..i + 5)
            .ok_or_else(|| bad("a short PRELOGIN"))?;
        let offset = usize::from(u16::from_be_bytes([field[0], field[1]]));
        let length = usize::from(u16::from_be_bytes([field[2], field[3]]));
        if token == 1 && length >= 1 {
            return request
                .get(offset)
                .copied()
                .ok_or_else(|| bad("PRELOGIN ENCRYPTION out of bounds"));
        }
        i += 5;
    }
    Ok(ENCRYPT_NOT_SUP)
}

fn prelogin_answer(encryption: u8) -> Vec<u8> {
    // VERSION 16.0.1000.0, ENCRYPTION, INSTOPT "", THREADID (empty), MARS off.
    let options: [(u8, Vec<u8>); 5] = [
        (0, vec![16, 0, 0x03, 0xE8, 0, 0]),
        (1, vec![encryption]),
        (2, vec![0]),
        (3, vec![]),
        (4, vec![0]),
    ];
    let mut head = Vec::new();
    let mut data = Vec::new();
    let start = options.len() * 5 + 1;
    for (token, value) in &options {
        let offset = (start + data.len()) as u16;
        head.push(*token);
        head.extend_from_slice(&offset.to_be_bytes());
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        data.extend_from_slice(value);
    }
    head.push(0xFF);
    head.extend(data);
    head
}

// ---------------------------------------------------------------------------------------------
// LOGIN7 and the session

struct Login {
    tds_version: u32,
    packet_size: u32,
    user: String,
    password: String,
    database: String,
    sspi: bool,
}

fn utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn parse_login(body: &[u8]) -> io::Result<Login> {
    if body.len() < 94 {
        return Err(bad("a LOGIN7 shorter than its fixed part"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([body[i], body[i + 1]]));
    let field = |i: usize| -> io::Result<&[u8]> {
        let (offset, chars) = (u16_at(i), u16_at(i + 2));
        body.get(offset..offset + chars * 2)
            .ok_or_else(|| bad("a LOGIN7 field out of bounds"))
    };
    let password: Vec<u8> = field(44)?
        .iter()
        .map(|b| {
            let x = b ^ 0xA5;
            x.rotate_left(4)
        })
        .collect();
    Ok(Login {
        tds_version: u32_at(4),
        packet_size: u32_at(8),
        user: utf16(field(40)?),
        password: utf16(&password),
        database: utf16(field(68)?),
        sspi: u16_at(80) > 0,
    })
}

async fn session(
    mut io: Box<dyn Io>,
    login: Vec<u8>,
    mode: ConnMode,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let login = parse_login(&login)?;
    let packet_size = usize::try_from(login.packet_size)
        .unwrap_or(4096)
        .clamp(512, 32767);
    let index = {
        let mut state = shared.state();
        state.connections.push(ConnInfo {
            mode,
            user: login.user.clone(),
            database: login.database.clone(),
            tds_version: login.tds_version,
            logged_in: false,
        });
        state.connections.len() - 1
    };
    let mut t = Tokens::default();
    let (known, login_ok, user_known) = {
        let state = shared.state();
        let wanted = if login.database.is_empty() {
            "master"
        } else {
            &login.database
        };
        let known = state
            .databases
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(wanted))
            .map(|d| d.name.clone())
            .or_else(|| {
                wanted
                    .eq_ignore_ascii_case("master")
                    .then(|| "master".into())
            });
        let login_ok = !login.sspi
            && state
                .logins
                .iter()
                .any(|(u, p)| *u == login.user && *p == login.password);
        let user_known = state.logins.iter().any(|(u, _)| *u == login.user);
        (known, login_ok, user_known)
    };
    let injected = shared.fault(Op::Login);
    let database = {
        match (injected, login_ok, known) {
            (Some(Fault::Error(n)), _, _) => {
                t.error(&server_error(n, &login.user, "", ""));
                None
            }
            (Some(Fault::Delay(d)), true, Some(db)) => {
                tokio::time::sleep(d).await;
                Some(db)
            }
            (Some(Fault::Hang), _, _) => {
                io.write_all(&packets(REPLY, &[0xE3], packet_size, false))
                    .await?;
                io.flush().await?;
                until_closed(&mut io).await;
                return Ok(());
            }
            (Some(Fault::Drop), _, _) => return Ok(()),
            (_, false, _) => {
                let mut e = server_error(18456, &login.user, "", "");
                e.state = if login.sspi {
                    58
                } else if user_known {
                    8
                } else {
                    5
                };
                if login.sspi {
                    e.message = "Login failed. The login is from an untrusted domain and cannot be used with Integrated authentication (the fake SQL server has SQL logins only).".into();
                }
                t.error(&e);
                None
            }
            (_, true, None) => {
                t.error(&server_error(4060, &login.user, &login.database, ""));
                t.error(&server_error(18456, &login.user, "", ""));
                None
            }
            (_, true, Some(db)) => Some(db),
        }
    };
    let Some(database) = database else {
        t.done(0xFD, 0x02, 0);
        io.write_all(&packets(REPLY, &t.0, packet_size, true))
            .await?;
        io.flush().await?;
        return Ok(());
    };
    t.envchange_text(1, &database, "master");
    t.envchange_bytes(7, &[0x09, 0x04, 0xD0, 0x00, 0x34]);
    t.info(
        5701,
        2,
        0,
        &format!("Changed database context to '{database}'."),
    );
    t.loginack(login.tds_version.min(0x7400_0004));
    t.envchange_text(4, &packet_size.to_string(), "4096");
    t.done(0xFD, 0, 0);
    io.write_all(&packets(REPLY, &t.0, packet_size, true))
        .await?;
    io.flush().await?;
    shared.state().connections[index].logged_in = true;

    while let Some((kind, body)) = read_message(&mut io).await? {
        let request = match kind {
            BATCH => parse_batch(&body).map(|text| (text, Vec::new(), false)),
            RPC => parse_rpc(&body).map(|(text, params)| (text, params, true)),
            ATTENTION => {
                let mut t = Tokens::default();
                t.done(0xFD, 0x20, 0);
                io.write_all(&packets(REPLY, &t.0, packet_size, true))
                    .await?;
                continue;
            }
            other => Err(format!("message type 0x{other:02x} is not supported")),
        };
        let reply = match request {
            Ok((text, params, rpc)) => {
                statement(shared, &database, &text, &params, rpc, &mut io, packet_size).await?
            }
            Err(problem) => {
                let mut t = Tokens::default();
                t.error(&ServerError {
                    number: 50000,
                    state: 1,
                    class: 16,
                    message: format!("fake SQL server: {problem}"),
                });
                t.done(0xFD, 0x02, 0);
                Reply::Send(t.0)
            }
        };
        match reply {
            Reply::Send(bytes) => {
                io.write_all(&packets(REPLY, &bytes, packet_size, true))
                    .await?;
                io.flush().await?;
            }
            Reply::Close => return Ok(()),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Text(String),
    Int(i64),
    Bit(bool),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Text(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bit(b) => u8::from(*b).to_string(),
        }
    }
}

/// Skips ALL_HEADERS (TDS 7.2+).
fn after_headers(body: &[u8]) -> Result<&[u8], String> {
    let total = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("a request without ALL_HEADERS")?;
    body.get(total..)
        .ok_or_else(|| "ALL_HEADERS out of bounds".into())
}

fn parse_batch(body: &[u8]) -> Result<String, String> {
    Ok(utf16(after_headers(body)?))
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let part = self
            .data
            .get(self.at..self.at + n)
            .ok_or("an RPC request ends early")?;
        self.at += n;
        Ok(part)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "u64")?))
    }
}

/// An RPC request: the statement of `sp_executesql` and its parameter values (after the
/// declarations).
fn parse_rpc(body: &[u8]) -> Result<(String, Vec<Value>), String> {
    let mut r = Reader {
        data: after_headers(body)?,
        at: 0,
    };
    let name_len = r.u16()?;
    if name_len == 0xFFFF {
        let id = r.u16()?;
        if id != 10 {
            return Err(format!("stored procedure id {id} (only sp_executesql, 10)"));
        }
    } else {
        let name = utf16(r.take(usize::from(name_len) * 2)?);
        if !name.eq_ignore_ascii_case("sp_executesql") {
            return Err(format!("stored procedure {name} (only sp_executesql)"));
        }
    }
    let _flags = r.u16()?;
    let mut values = Vec::new();
    while r.at < r.data.len() {
        let name_chars = usize::from(r.u8()?);
        let _name = r.take(name_chars * 2)?;
        let _status = r.u8()?;
        values.push(param_value(&mut r)?);
    }
    let mut values = values.into_iter();
    let statement = match values.next() {
        Some(Value::Text(s)) => s,
        _ => return Err("sp_executesql without a statement".into()),
    };
    let _declarations = values.next();
    Ok((statement, values.collect()))
}

fn param_value(r: &mut Reader<'_>) -> Result<Value, String> {
    let kind = r.u8()?;
    match kind {
        // NVARCHAR, NCHAR, BIGVARCHAR, BIGCHAR: max length, collation, value (PLP for max).
        0xE7 | 0xEF | 0xA7 | 0xAF => {
            let max = r.u16()?;
            let _collation = r.take(5)?;
            let unicode = matches!(kind, 0xE7 | 0xEF);
            let bytes = if max == 0xFFFF {
                let total = r.u64()?;
                if total == u64::MAX {
                    return Ok(Value::Null);
                }
                let mut bytes = Vec::new();
                loop {
                    let chunk = r.u32()? as usize;
                    if chunk == 0 {
                        break;
                    }
                    bytes.extend_from_slice(r.take(chunk)?);
                }
                bytes
            } else {
                let len = r.u16()?;
                if len == 0xFFFF {
                    return Ok(Value::Null);
                }
                r.take(usize::from(len))?.to_vec()
            };
            Ok(Value::Text(if unicode {
                utf16(&bytes)
            } else {
                bytes.iter().map(|&b| char::from(b)).collect()
            }))
        }
        // INTN
        0x26 => {
            let _max = r.u8()?;
            let len = usize::from(r.u8()?);
            let b = r.take(len)?;
            Ok(match len {
                0 => Value::Null,
                1 => Value::Int(i64::from(b[0])),
                2 => Value::Int(i64::from(i16::from_le_bytes([b[0], b[1]]))),
                4 => Value::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                8 => Value::Int(i64::from_le_bytes(b.try_into().map_err(|_| "int")?)),
                n => return Err(format!("an INTN of {n} bytes")),
            })
        }
        // BITN
        0x68 => {
            let _max = r.u8()?;
            let len = usize::from(r.u8()?);
            let b = r.take(len)?;
            Ok(b.first().map_or(Value::Null, |v| Value::Bit(*v != 0)))
        }
        other => Err(format!("parameter type 0x{other:02x} not supported")),
    }
}

// ---------------------------------------------------------------------------------------------
// The script

enum Reply {
    Send(Vec<u8>),
    Close,
}

/// Collapsed whitespace, lower case, without a trailing `;`.
fn normalize(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(';')
        .trim()
        .to_ascii_lowercase()
}

fn classify(normalized: &str) -> Op {
    if normalized.starts_with("select gi_secretserver from dbo.ssox_globalinfo") {
        Op::SecretServer
    } else if normalized.starts_with("select isnull(max(backup_set_id), 0)") {
        Op::LastBackupId
    } else if normalized.starts_with("backup database ") {
        Op::Backup
    } else if normalized.starts_with("restore verifyonly from disk") {
        Op::Verify
    } else if normalized.contains("from msdb.dbo.backupset as s") {
        Op::History
    } else {
        Op::Other
    }
}

/// `[name]` (with `]]`) right after `prefix` in `text` (case-insensitive).
fn bracketed_after(text: &str, prefix: &str) -> Option<String> {
    let at = text.to_ascii_lowercase().find(prefix)? + prefix.len();
    unquote(text[at..].trim_start().strip_prefix('[')?, ']')
}

/// `N'text'` (with `''`) after `prefix` in `text`.
fn literal_after(text: &str, prefix: &str) -> Option<String> {
    let at = text.to_ascii_lowercase().find(prefix)? + prefix.len();
    let rest = text[at..].trim_start();
    let rest = rest
        .strip_prefix("N'")
        .or_else(|| rest.strip_prefix("n'"))
        .or_else(|| rest.strip_prefix('\''))?;
    unquote(rest, '\'')
}

/// The text up to the closing `close`, a doubled `close` standing for itself (T-SQL's quoting).
fn unquote(rest: &str, close: char) -> Option<String> {
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != close {
            out.push(c);
        } else if chars.peek() == Some(&close) {
            chars.next();
            out.push(close);
        } else {
            return Some(out);
        }
    }
    None
}

/// The value of parameter `n` (1-based) when the statement names `@Pn`, else what `literal` finds.
fn argument(
    normalized: &str,
    params: &[Value],
    n: usize,
    literal: impl FnOnce() -> Option<String>,
) -> Option<Value> {
    if normalized.contains(&format!("@p{n}")) {
        params.get(n - 1).cloned()
    } else {
        literal().map(Value::Text)
    }
}

struct ServerError {
    number: i32,
    state: u8,
    class: u8,
    message: String,
}

/// SQL Server's own wording of the errors the script plays.
fn server_error(number: i32, user: &str, database: &str, path: &str) -> ServerError {
    let (class, message) = match number {
        18456 => (14, format!("Login failed for user '{user}'.")),
        4060 => (
            11,
            format!("Cannot open database \"{database}\" requested by the login. The login failed."),
        ),
        911 => (
            16,
            format!("Database '{database}' does not exist. Make sure that the name is entered correctly."),
        ),
        262 => (
            14,
            format!("BACKUP DATABASE permission denied in database '{database}'."),
        ),
        229 => (
            14,
            format!("The SELECT permission was denied on the object 'SSOX_GlobalInfo', database '{database}', schema 'dbo'."),
        ),
        3201 => (
            16,
            format!("Cannot open backup device '{path}'. Operating system error 5(Access is denied.)."),
        ),
        3013 => (16, "BACKUP DATABASE is terminating abnormally.".to_string()),
        3189 => (16, "Damage to the backup set was detected.".to_string()),
        1205 => (
            13,
            "Transaction (Process ID 57) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction.".to_string(),
        ),
        208 => (16, "Invalid object name 'dbo.SSOX_GlobalInfo'.".to_string()),
        n => (16, format!("Error {n} (played by the fake SQL server).")),
    };
    ServerError {
        number,
        state: 1,
        class,
        message,
    }
}

/// What the script answers: rows, info messages, errors.
#[derive(Default)]
struct Answer {
    columns: Vec<(&'static str, Column)>,
    rows: Vec<Vec<Value>>,
    infos: Vec<(i32, String)>,
    errors: Vec<ServerError>,
}

#[derive(Clone, Copy)]
enum Column {
    Int,
    BigInt,
    Bit,
    NVarChar(u16),
}

fn failed(errors: Vec<ServerError>) -> Answer {
    Answer {
        errors,
        ..Answer::default()
    }
}

fn backup_body(database: &str, corrupt: bool) -> Vec<u8> {
    let body = format!(
        "fake SQL Server backup of {database} at {:?}\n",
        SystemTime::now()
    )
    .repeat(32);
    let digest = hex(&Sha256::digest(body.as_bytes()));
    let mut file = format!("FAKEMSSQLBACKUP {database} {digest}\n").into_bytes();
    file.extend_from_slice(body.as_bytes());
    if corrupt && let Some(last) = file.last_mut() {
        *last ^= 0xFF;
    }
    file
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn backup_is_valid(file: &[u8]) -> bool {
    let Some(newline) = file.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let header = String::from_utf8_lossy(&file[..newline]);
    let Some(digest) = header.rsplit(' ').next() else {
        return false;
    };
    header.starts_with("FAKEMSSQLBACKUP ") && hex(&Sha256::digest(&file[newline + 1..])) == digest
}

/// Runs one statement; faults apply here.
#[allow(clippy::too_many_arguments)]
async fn statement(
    shared: &Arc<Shared>,
    current_db: &str,
    text: &str,
    params: &[Value],
    rpc: bool,
    io: &mut Box<dyn Io>,
    packet_size: usize,
) -> io::Result<Reply> {
    let normalized = normalize(text);
    let op = classify(&normalized);
    let fault = shared.fault(op);
    let log = |outcome: &str| {
        shared.state().log.push(Logged {
            at: SystemTime::now(),
            op,
            text: text.to_string(),
            params: params.iter().map(Value::text).collect(),
            outcome: outcome.to_string(),
        });
    };
    if let Some(Fault::Delay(d)) = &fault {
        tokio::time::sleep(*d).await;
    }
    let first_part = |op: Op| -> Vec<u8> {
        let mut t = Tokens::default();
        match op {
            Op::Backup => t.info(
                4035,
                1,
                0,
                &format!("Processed 392 pages for database '{current_db}', file '{current_db}' on file 1."),
            ),
            _ => t.info(0, 1, 0, "working"),
        }
        t.0
    };
    match &fault {
        Some(Fault::Hang) => {
            log("hang");
            io.write_all(&packets(REPLY, &first_part(op), packet_size, false))
                .await?;
            io.flush().await?;
            until_closed(io).await;
            return Ok(Reply::Close);
        }
        Some(Fault::Drop) => {
            log("drop");
            io.write_all(&packets(REPLY, &first_part(op), packet_size, false))
                .await?;
            io.flush().await?;
            return Ok(Reply::Close);
        }
        _ => {}
    }
    let path_of = |n: usize| {
        argument(&normalized, params, n, || literal_after(text, "disk ="))
            .map(|v| v.text())
            .unwrap_or_default()
    };
    let answer = match (op, &fault) {
        (_, Some(Fault::Error(number))) => {
            let (db, path) = match op {
                Op::Backup => (current_db.to_string(), path_of(2)),
                Op::Verify => (current_db.to_string(), path_of(1)),
                _ => (current_db.to_string(), String::new()),
            };
            let mut errors = vec![server_error(*number, "", &db, &path)];
            if matches!(op, Op::Backup | Op::Verify) && *number != 3013 {
                let mut end = server_error(3013, "", &db, &path);
                if op == Op::Verify {
                    end.message = "VERIFY DATABASE is terminating abnormally.".into();
                }
                errors.push(end);
            }
            failed(errors)
        }
        (Op::SecretServer, _) => {
            let rows = shared
                .state()
                .databases
                .iter()
                .find(|d| d.name.eq_ignore_ascii_case(current_db))
                .and_then(|d| d.global_info.clone());
            match rows {
                None => failed(vec![server_error(208, "", current_db, "")]),
                Some(rows) => Answer {
                    columns: vec![("gi_SecretServer", Column::NVarChar(256))],
                    rows: rows.into_iter().map(|r| vec![Value::Text(r)]).collect(),
                    ..Answer::default()
                },
            }
        }
        (Op::LastBackupId, _) => {
            let db = params.first().map(Value::text).unwrap_or_default();
            let last = shared
                .state()
                .backups
                .iter()
                .filter(|b| b.database_name.eq_ignore_ascii_case(&db))
                .map(|b| b.backup_set_id)
                .max()
                .unwrap_or(0);
            Answer {
                columns: vec![("last_id", Column::Int)],
                rows: vec![vec![Value::Int(i64::from(last))]],
                ..Answer::default()
            }
        }
        (Op::Backup, fault) => {
            let db = argument(&normalized, params, 1, || {
                bracketed_after(text, "backup database")
            })
            .map(|v| v.text())
            .unwrap_or_default();
            let path = path_of(2);
            let options = normalized
                .rsplit_once(" with ")
                .map(|(_, o)| o.to_string())
                .unwrap_or_default();
            backup(shared, &db, &path, &options, fault.as_ref())
        }
        (Op::Verify, _) => {
            let path = path_of(1);
            match std::fs::read(&path) {
                Err(_) => {
                    let mut missing = server_error(3201, "", "", &path);
                    missing.message = format!(
                        "Cannot open backup device '{path}'. Operating system error 2(The system cannot find the file specified.)."
                    );
                    let mut end = server_error(3013, "", "", "");
                    end.message = "VERIFY DATABASE is terminating abnormally.".into();
                    failed(vec![missing, end])
                }
                Ok(file) if !backup_is_valid(&file) => {
                    let mut end = server_error(3013, "", "", "");
                    end.message = "VERIFY DATABASE is terminating abnormally.".into();
                    failed(vec![server_error(3189, "", "", ""), end])
                }
                Ok(_) => Answer {
                    infos: vec![(3262, "The backup set on file 1 is valid.".into())],
                    ..Answer::default()
                },
            }
        }
        (Op::History, _) => {
            let db = params.first().map(Value::text).unwrap_or_default();
            let after = match params.get(1) {
                Some(Value::Int(i)) => *i,
                _ => 0,
            };
            let path = params.get(2).map(Value::text).unwrap_or_default();
            let row = shared
                .state()
                .backups
                .iter()
                .filter(|b| {
                    b.database_name.eq_ignore_ascii_case(&db)
                        && i64::from(b.backup_set_id) > after
                        && b.physical_device_name == path
                })
                .max_by_key(|b| b.backup_set_id)
                .cloned();
            Answer {
                columns: vec![
                    ("backup_set_id", Column::Int),
                    ("backup_size", Column::BigInt),
                    ("finished", Column::NVarChar(33)),
                    ("is_copy_only", Column::Bit),
                    ("has_backup_checksums", Column::Bit),
                    ("physical_device_name", Column::NVarChar(260)),
                ],
                rows: row
                    .map(|b| {
                        vec![
                            Value::Int(i64::from(b.backup_set_id)),
                            Value::Int(b.backup_size),
                            Value::Text(b.finished),
                            Value::Bit(b.is_copy_only),
                            Value::Bit(b.has_backup_checksums),
                            Value::Text(b.physical_device_name),
                        ]
                    })
                    .into_iter()
                    .collect(),
                ..Answer::default()
            }
        }
        (Op::Other | Op::Login | Op::Any, _) => {
            if normalized == "select @@version" {
                Answer {
                    columns: vec![("", Column::NVarChar(4000))],
                    rows: vec![vec![Value::Text(
                        "Microsoft SQL Server 2022 (fake, ssofleet tests) - 16.0.1000.0".into(),
                    )]],
                    ..Answer::default()
                }
            } else if normalized == "select 1" {
                Answer {
                    columns: vec![("", Column::Int)],
                    rows: vec![vec![Value::Int(1)]],
                    ..Answer::default()
                }
            } else if normalized.starts_with("set ") || normalized.is_empty() {
                Answer::default()
            } else {
                failed(vec![ServerError {
                    number: 2812,
                    state: 62,
                    class: 16,
                    message: format!("fake SQL server: no script for this statement: {text}"),
                }])
            }
        }
    };
    log(&match answer.errors.first() {
        Some(e) => format!("error {}", e.number),
        None => "ok".into(),
    });
    Ok(Reply::Send(encode(&answer, rpc)))
}

/// `BACKUP DATABASE`: writes the file, records the msdb row.
fn backup(
    shared: &Shared,
    database: &str,
    path: &str,
    options: &str,
    fault: Option<&Fault>,
) -> Answer {
    let Some(name) = shared
        .state()
        .databases
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(database))
        .map(|d| d.name.clone())
    else {
        return failed(vec![
            server_error(911, "", database, path),
            server_error(3013, "", database, path),
        ]);
    };
    let file = backup_body(&name, fault == Some(&Fault::Corrupt));
    if let Err(e) = std::fs::write(path, &file) {
        let mut device = server_error(3201, "", &name, path);
        if e.kind() == io::ErrorKind::NotFound {
            device.message = format!(
                "Cannot open backup device '{path}'. Operating system error 3(The system cannot find the path specified.)."
            );
        }
        return failed(vec![device, server_error(3013, "", &name, path)]);
    }
    let pages = file.len().div_ceil(8192) + 2;
    if fault != Some(&Fault::NoHistory) {
        let mut state = shared.state();
        state.next_id += 1;
        let id = state.next_id;
        let finished = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.3f")
            .to_string();
        state.backups.push(BackupRow {
            backup_set_id: id,
            database_name: name.clone(),
            backup_size: i64::try_from(file.len()).unwrap_or(i64::MAX),
            finished,
            is_copy_only: options.contains("copy_only"),
            has_backup_checksums: options.contains("checksum"),
            physical_device_name: path.to_string(),
        });
    }
    Answer {
        infos: vec![
            (
                4035,
                format!("Processed {pages} pages for database '{name}', file '{name}' on file 1."),
            ),
            (
                3014,
                format!(
                    "BACKUP DATABASE successfully processed {pages} pages in 0.012 seconds (2.604 MB/sec)."
                ),
            ),
        ],
        ..Answer::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Default)]
struct Tokens(Vec<u8>);

impl Tokens {
    fn b_varchar(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().take(255).collect();
        self.0.push(units.len() as u8);
        for u in units {
            self.0.extend_from_slice(&u.to_le_bytes());
        }
    }

    fn us_varchar(&mut self, s: &str) {
        let units: Vec<u16> = s.encode_utf16().take(65_535).collect();
        self.0
            .extend_from_slice(&(units.len() as u16).to_le_bytes());
        for u in units {
            self.0.extend_from_slice(&u.to_le_bytes());
        }
    }

    /// A token with a u16 length: `body` writes its content.
    fn sized(&mut self, token: u8, body: impl FnOnce(&mut Tokens)) {
        let mut inner = Tokens::default();
        body(&mut inner);
        self.0.push(token);
        self.0
            .extend_from_slice(&(inner.0.len() as u16).to_le_bytes());
        self.0.extend(inner.0);
    }

    fn envchange_text(&mut self, kind: u8, new: &str, old: &str) {
        self.sized(0xE3, |t| {
            t.0.push(kind);
            t.b_varchar(new);
            t.b_varchar(old);
        });
    }

    fn envchange_bytes(&mut self, kind: u8, new: &[u8]) {
        self.sized(0xE3, |t| {
            t.0.push(kind);
            t.0.push(new.len() as u8);
            t.0.extend_from_slice(new);
            t.0.push(0);
        });
    }

    fn message(&mut self, token: u8, number: i32, state: u8, class: u8, text: &str) {
        self.sized(token, |t| {
            t.0.extend_from_slice(&number.to_le_bytes());
            t.0.push(state);
            t.0.push(class);
            t.us_varchar(text);
            t.b_varchar("FAKESQL01");
            t.b_varchar("");
            t.0.extend_from_slice(&1u32.to_le_bytes());
        });
    }

    fn info(&mut self, number: i32, state: u8, class: u8, text: &str) {
        self.message(0xAB, number, state, class, text);
    }

    fn error(&mut self, e: &ServerError) {
        self.message(0xAA, e.number, e.state, e.class, &e.message);
    }

    fn loginack(&mut self, tds_version: u32) {
        self.sized(0xAD, |t| {
            t.0.push(1);
            t.0.extend_from_slice(&tds_version.to_be_bytes());
            t.b_varchar("Microsoft SQL Server");
            t.0.extend_from_slice(&[16, 0, 0x03, 0xE8]);
        });
    }

    fn done(&mut self, token: u8, status: u16, rows: u64) {
        self.0.push(token);
        self.0.extend_from_slice(&status.to_le_bytes());
        self.0.extend_from_slice(&0xC1u16.to_le_bytes());
        self.0.extend_from_slice(&rows.to_le_bytes());
    }

    fn colmetadata(&mut self, columns: &[(&str, Column)]) {
        self.0.push(0x81);
        self.0
            .extend_from_slice(&(columns.len() as u16).to_le_bytes());
        for (name, column) in columns {
            self.0.extend_from_slice(&0u32.to_le_bytes()); // user type
            self.0.extend_from_slice(&0x0001u16.to_le_bytes()); // nullable
            match column {
                Column::Int => self.0.extend_from_slice(&[0x26, 4]),
                Column::BigInt => self.0.extend_from_slice(&[0x26, 8]),
                Column::Bit => self.0.extend_from_slice(&[0x68, 1]),
                Column::NVarChar(chars) => {
                    self.0.push(0xE7);
                    self.0.extend_from_slice(&(chars * 2).to_le_bytes());
                    self.0.extend_from_slice(&[0x09, 0x04, 0xD0, 0x00, 0x34]);
                }
            }
            self.b_varchar(name);
        }
    }

    fn row(&mut self, columns: &[(&str, Column)], values: &[Value]) {
        self.0.push(0xD1);
        for ((_, column), value) in columns.iter().zip(values) {
            match (column, value) {
                (Column::NVarChar(_), Value::Text(s)) => {
                    let bytes: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
                    self.0
                        .extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                    self.0.extend(bytes);
                }
                (Column::NVarChar(_), _) => self.0.extend_from_slice(&0xFFFFu16.to_le_bytes()),
                (Column::Int, Value::Int(i)) => {
                    self.0.push(4);
                    self.0
                        .extend_from_slice(&i32::try_from(*i).unwrap_or(0).to_le_bytes());
                }
                (Column::BigInt, Value::Int(i)) => {
                    self.0.push(8);
                    self.0.extend_from_slice(&i.to_le_bytes());
                }
                (Column::Bit, Value::Bit(b)) => self.0.extend_from_slice(&[1, u8::from(*b)]),
                _ => self.0.push(0),
            }
        }
    }
}

const DONE: u8 = 0xFD;
const DONEPROC: u8 = 0xFE;
const DONEINPROC: u8 = 0xFF;
const MORE: u16 = 0x01;
const ERROR: u16 = 0x02;
const COUNT: u16 = 0x10;

/// The answer's tokens: a batch ends with DONE; `sp_executesql` with DONEINPROC, RETURNSTATUS and
/// DONEPROC, as SQL Server sends them.
fn encode(answer: &Answer, rpc: bool) -> Vec<u8> {
    let mut t = Tokens::default();
    for (number, text) in &answer.infos {
        t.info(*number, 1, 0, text);
    }
    for e in &answer.errors {
        t.error(e);
    }
    let error = !answer.errors.is_empty();
    let has_rows = !answer.columns.is_empty() && !error;
    if has_rows {
        t.colmetadata(&answer.columns);
        for row in &answer.rows {
            t.row(&answer.columns, row);
        }
    }
    let status = if error { ERROR } else { 0 } | if has_rows { COUNT } else { 0 };
    let rows = if has_rows {
        answer.rows.len() as u64
    } else {
        0
    };
    if rpc {
        t.done(DONEINPROC, status | MORE, rows);
        t.0.push(0x79);
        t.0.extend_from_slice(&i32::from(error).to_le_bytes());
        t.done(DONEPROC, if error { ERROR } else { 0 }, 0);
    } else {
        t.done(DONE, status, rows);
    }
    t.0
}

/// Waits for the client to close the connection (what a hung server notices last).
async fn until_closed(io: &mut Box<dyn Io>) {
    let mut buf = [0u8; 512];
    while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
}
