//! A real SMTP server on loopback that accepts every message and keeps it, so tests read
//! the mails the control plane sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent (dot-unstuffed).
    pub data: String,
}

impl ReceivedMail {
    /// The one-time code in the message (`code: <43 characters of base64url>`).
    pub fn token(&self) -> Option<String> {
        let start = self.data.find("code: ")? + "code: ".len();
        let token: String = self.data[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        (token.len() == 43).then_some(token)
    }
}

pub struct SmtpSink {
    port: u16,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
}

fn address(arg: &str) -> String {
    arg.trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let mails: Arc<Mutex<Vec<ReceivedMail>>> = Arc::default();
        let sink = Arc::clone(&mails);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let _ = session(stream, sink).await;
                });
            }
        });
        SmtpSink { port, mails }
    }

    /// `smtp://127.0.0.1:<port>` (plain SMTP, loopback only).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.mails.lock().expect("mails").clone()
    }

    /// Waits for the `n`-th mail to `to` (1-based) and returns it.
    pub async fn wait_for(&self, to: &str, n: usize, timeout: Duration) -> ReceivedMail {
        let deadline = Instant::now() + timeout;
        loop {
            let matching: Vec<_> = self
                .mails()
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t == &to.to_lowercase()))
                .collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no mail #{n} to {to} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    sink: Arc<Mutex<Vec<ReceivedMail>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(b"220 localhost ESMTP test sink\r\n")
        .await?;
    let mut from = String::new();
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO")
            || upper.starts_with("RSET")
            || upper.starts_with("NOOP")
        {
            b"250 OK\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&line["MAIL FROM:".len()..]);
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line["RCPT TO:".len()..]));
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            sink.lock().expect("mails").push(ReceivedMail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 OK queued\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
