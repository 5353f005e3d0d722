//! Outgoing mail: SMTP (lettre) in production and tests, or a local outbox file for the
//! local run. Messages carry one-time tokens, so they are never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Body;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid address or message: {0}")]
    Message(String),
    #[error("smtp: {0}")]
    Smtp(String),
    #[error("outbox: {0}")]
    Outbox(String),
}

/// One outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: String,
    },
    /// Appends each message to a file (local run), readable by the developer.
    Outbox {
        path: PathBuf,
        lock: Arc<Mutex<()>>,
        from: String,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Smtp { from, .. } => write!(f, "Mailer::Smtp(from {from})"),
            Mailer::Outbox { path, .. } => write!(f, "Mailer::Outbox({})", path.display()),
        }
    }
}

impl Mailer {
    /// An SMTP transport from a URL (`smtp://host:port` plain, `smtp://host?tls=required`
    /// STARTTLS, `smtps://host` implicit TLS) with optional credentials.
    pub fn smtp(
        url: &str,
        credentials: Option<(String, String)>,
        from: String,
    ) -> Result<Mailer, MailError> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|err| MailError::Smtp(err.to_string()))?
            .timeout(Some(Duration::from_secs(10)));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Mailer::Smtp {
            transport: builder.build(),
            from,
        })
    }

    pub fn outbox(path: PathBuf, from: String) -> Mailer {
        Mailer::Outbox {
            path,
            lock: Arc::new(Mutex::new(())),
            from,
        }
    }

    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        match self {
            Mailer::Smtp { transport, from } => {
                let message = Message::builder()
                    .from(from.parse().map_err(|e: lettre::address::AddressError| {
                        MailError::Message(e.to_string())
                    })?)
                    .to(mail
                        .to
                        .parse()
                        .map_err(|e: lettre::address::AddressError| {
                            MailError::Message(e.to_string())
                        })?)
                    .subject(mail.subject.clone())
                    .header(ContentType::TEXT_PLAIN)
                    // plain 7bit when possible, so links and codes stay intact on every client
                    .body(
                        Body::new_with_encoding(
                            mail.body.clone(),
                            ContentTransferEncoding::SevenBit,
                        )
                        .unwrap_or_else(|_| Body::new(mail.body.clone())),
                    )
                    .map_err(|err| MailError::Message(err.to_string()))?;
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|err| MailError::Smtp(err.to_string()))
            }
            Mailer::Outbox { path, lock, from } => {
                let _guard = lock.lock().await;
                let entry = format!(
                    "From: {from}\nTo: {}\nSubject: {}\nDate: {}\n\n{}\n\n----- end of message -----\n\n",
                    mail.to,
                    mail.subject,
                    gateway_core::unix_now(),
                    mail.body
                );
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|err| MailError::Outbox(format!("{}: {err}", path.display())))?;
                file.write_all(entry.as_bytes())
                    .await
                    .map_err(|err| MailError::Outbox(err.to_string()))
            }
        }
    }

    /// Sends in the background (so the caller's answer time does not depend on whether a
    /// mail was sent); failures are logged without the content.
    pub fn send_later(&self, mail: Mail, purpose: &'static str) {
        let mailer = self.clone();
        tokio::spawn(async move {
            match mailer.send(&mail).await {
                Ok(()) => {
                    metrics::counter!("gateway_mail_sent_total", "purpose" => purpose).increment(1);
                    tracing::info!(purpose, "mail sent");
                }
                Err(err) => {
                    metrics::counter!("gateway_mail_failed_total", "purpose" => purpose)
                        .increment(1);
                    tracing::error!(purpose, error = %err, "mail not sent");
                }
            }
        });
    }
}
