//! A real SMTP server on loopback (mailin-embedded) that records what it accepts.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use contact_export_server::mail::Mailer;
use mailin_embedded::{Handler, Response, Server, response};
use tokio::sync::watch;

use super::harness::within;

pub const FROM: &str = "Contact Export <exports@example.com>";

/// One message as the SMTP listener accepted it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope's MAIL FROM.
    pub from: String,
    /// The envelope's RCPT TO, in order.
    pub to: Vec<String>,
    /// The message as sent after DATA: headers, blank line, encoded body.
    pub data: String,
}

/// mailin's handler: cloned for every connection, so the message being received lives in the
/// clone and only finished messages reach the shared list.
#[derive(Clone)]
struct Recorder {
    current: Option<Received>,
    received: Arc<Mutex<Vec<Received>>>,
    /// How many messages were accepted, for tests to wait on.
    count: Arc<watch::Sender<usize>>,
}

impl Handler for Recorder {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Received {
            from: from.to_owned(),
            to: to.to_vec(),
            data: String::new(),
        });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let current = self.current.as_mut().expect("DATA after data_start");
        current.data.push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        // Recorded before the 250 goes out, so a sender that saw success finds it here.
        let message = self.current.take().expect("end of DATA after data_start");
        self.received.lock().unwrap().push(message);
        self.count.send_modify(|n| *n += 1);
        response::OK
    }
}

/// A real SMTP server on 127.0.0.1, on a port of its own. Its thread lives as long as the test
/// binary: mailin-embedded has no way to stop `serve()`.
pub struct SmtpListener {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
}

impl SmtpListener {
    pub fn start() -> SmtpListener {
        // Bound here and handed over, so the port is known and taken before anyone connects.
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the SMTP listener");
        let addr = listener.local_addr().unwrap();
        let (count_tx, count) = watch::channel(0);
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut server = Server::new(Recorder {
            current: None,
            received: received.clone(),
            count: Arc::new(count_tx),
        });
        server.with_name("mx.test").with_tcp_listener(listener);
        std::thread::Builder::new()
            .name(format!("smtp-{}", addr.port()))
            // Returns only if accepting fails; a test waiting for mail then times out, after this.
            .spawn(move || {
                if let Err(e) = server.serve() {
                    panic!("the SMTP listener stopped: {e}");
                }
            })
            .expect("SMTP thread");
        SmtpListener {
            addr,
            received,
            count,
        }
    }

    pub fn mailer(&self) -> Mailer {
        Mailer::from_url(&format!("smtp://{}", self.addr), FROM).expect("mailer")
    }

    /// Waits until at least `n` messages were accepted; returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let mut count = self.count.clone();
        within("mail at the SMTP listener", count.wait_for(|c| *c >= n))
            .await
            .expect("the SMTP thread holds the sender");
        self.received()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The headers, unfolded, and the decoded text body of a plain-text message.
pub fn parse_message(data: &str) -> (String, String) {
    let (headers, body) = data
        .split_once("\r\n\r\n")
        .expect("a blank line after the headers");
    let headers = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
    let encoding = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Transfer-Encoding: "))
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let body = match encoding.as_str() {
        "7bit" | "8bit" => body.to_owned(),
        "quoted-printable" => decode_quoted_printable(body),
        other => panic!("unexpected Content-Transfer-Encoding {other}"),
    };
    (headers, body)
}

fn decode_quoted_printable(encoded: &str) -> String {
    let joined = encoded.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex escape");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 body")
}
