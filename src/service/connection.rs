//! Accepted connections: a handshake deadline, and a way for a call to close its connection.
//!
//! * A client that opens a connection and does not send the HTTP/2 connection preface in time is
//!   disconnected (HTTP/2 keepalive pings, set on the server, only start once the handshake is
//!   done; they close half-open connections after it). The deadline counts the bytes the HTTP/2
//!   layer reads, so with TLS it covers the TLS handshake and the preface after it.
//! * [`PeerConnection`], in every request's extensions, closes the connection the request came on:
//!   hyper gives a handler no way to reset one stream whose peer does not read (its data waits for
//!   flow-control window that never comes), so a stalled stream takes its connection down.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": what every HTTP/2 client sends first.
const PREFACE_BYTES: usize = 24;

/// What a request knows of its connection (tonic puts it in the request's extensions).
#[derive(Clone, Debug)]
pub struct PeerConnection {
    pub tcp: TcpConnectInfo,
    closer: CancellationToken,
}

impl PeerConnection {
    /// Closes the connection: its reads and writes fail from now on, so hyper drops it and every
    /// call on it ends.
    pub fn close(&self) {
        self.closer.cancel();
    }
}

/// An accepted connection (`IO`: TCP, or TLS over TCP) with the handshake deadline and a closer.
pub struct Connection<IO> {
    io: IO,
    /// Until the preface has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    preface_left: usize,
    peer: PeerConnection,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<IO> Connection<IO> {
    /// `deadline`: when the HTTP/2 preface must have arrived (counted from the TCP accept).
    pub fn new(io: IO, tcp: TcpConnectInfo, deadline: Instant) -> Self {
        let closer = CancellationToken::new();
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            preface_left: PREFACE_BYTES,
            closed: Box::pin(closer.clone().cancelled_owned()),
            peer: PeerConnection { tcp, closer },
        }
    }

    /// An error once the connection has been closed by a call on it.
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.closed.as_mut().poll(cx).is_ready() {
            let message =
                "connection closed by the server: a stream on it could not send (see --stream-send-timeout-seconds)";
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, message));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_open(cx)?;
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                let message = "no HTTP/2 connection preface within the handshake timeout";
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.preface_left = this.preface_left.saturating_sub(buf.filled().len() - before);
            if this.preface_left == 0 {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> Connected for Connection<IO> {
    type ConnectInfo = PeerConnection;

    fn connect_info(&self) -> PeerConnection {
        self.peer.clone()
    }
}

/// A connection as accepted: plaintext TCP, or TLS over TCP.
pub type Io = Either<TcpStream, TlsStream<TcpStream>>;

/// The first pause of the accept loop when the process is out of file descriptors (or memory for
/// sockets); it doubles up to [`MAX_ACCEPT_BACKOFF`] while that lasts, instead of spinning on a
/// core that the connections it could serve need.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connections accepted on `listener`, each once its TLS handshake (when `tls`) is done, with
/// `timeout` from the TCP accept to the HTTP/2 preface. Handshakes run side by side, so one that
/// stalls holds up nobody; the loop ends when the stream is dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
) -> ReceiverStream<io::Result<Connection<Io>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, timeout, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    timeout: Duration,
    tx: mpsc::Sender<io::Result<Connection<Io>>>,
) {
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tx.closed() => return,
        };
        match accepted {
            Ok((tcp, _)) => {
                backoff = ACCEPT_BACKOFF;
                let deadline = Instant::now() + timeout;
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(connection) = handshake(tcp, tls, deadline).await {
                        let _ = tx.send(Ok(connection)).await;
                    }
                });
            }
            Err(e) if out_of_resources(&e) => {
                if backoff == ACCEPT_BACKOFF {
                    tracing::warn!(error = %e, "cannot accept connections (out of file descriptors?); backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
            // A connection that failed before it was accepted concerns that client alone.
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
}

/// The process or the system is out of file descriptors or socket memory: accepting again at once
/// fails again.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The TLS handshake (when `tls`) before `deadline`; `None` when it fails or runs late.
async fn handshake(tcp: TcpStream, tls: Option<TlsAcceptor>, deadline: Instant) -> Option<Connection<Io>> {
    let info = tcp.connect_info();
    let _ = tcp.set_nodelay(true);
    let io = match tls {
        None => Either::Left(tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Either::Right(stream),
            Ok(Err(e)) => {
                tracing::debug!(peer = ?info.remote_addr(), error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(peer = ?info.remote_addr(), "no TLS handshake within the handshake timeout");
                return None;
            }
        },
    };
    Some(Connection::new(io, info, deadline))
}
