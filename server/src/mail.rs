//! Outgoing mail through lettre: SMTP in production, a folder of `.eml` files for `dev`.

use std::path::PathBuf;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Errors configuring or sending mail.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail URL {0:?} is not smtp://, smtps:// or file:// (see `exportd serve --help`)")]
    UnsupportedUrl(String),
    #[error("invalid mail address {address:?}: {source}")]
    Address {
        address: String,
        source: lettre::address::AddressError,
    },
    #[error("building the message failed: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("writing the mail file: {0}")]
    File(#[from] lettre::transport::file::Error),
}

/// Sends mail from one configured sender.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    // The SMTP URL may carry a password: show only the kind of transport.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.transport {
            Transport::Smtp(_) => "smtp",
            Transport::File(_) => "file",
        };
        f.debug_struct("Mailer")
            .field("transport", &kind)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Mailer {
    /// `smtp://[user:pass@]host[:port]` (add `?tls=required` for STARTTLS),
    /// `smtps://…` for implicit TLS, or `file:///folder` to write `.eml` files.
    pub fn from_url(url: &str, from: &str) -> Result<Self, MailError> {
        let from: Mailbox = from.parse().map_err(|source| MailError::Address {
            address: from.to_owned(),
            source,
        })?;
        let transport = if let Some(path) = url.strip_prefix("file://") {
            let dir = PathBuf::from(path);
            Transport::File(AsyncFileTransport::new(dir))
        } else if url.starts_with("smtp://") || url.starts_with("smtps://") {
            Transport::Smtp(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.build())
        } else {
            return Err(MailError::UnsupportedUrl(url.to_owned()));
        };
        Ok(Mailer { transport, from })
    }

    /// The folder a file transport writes to, if this is one (for `dev`).
    pub fn file_folder(url: &str) -> Option<PathBuf> {
        url.strip_prefix("file://").map(PathBuf::from)
    }

    /// Sends a plain-text message.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|source| MailError::Address {
            address: to.to_owned(),
            source,
        })?;
        let message = Message::builder()
            // A Message-ID of our own: relays and spam filters expect one.
            .message_id(None)
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)?;
        match &self.transport {
            Transport::Smtp(t) => {
                t.send(message).await?;
            }
            Transport::File(t) => {
                t.send(message).await?;
            }
        }
        Ok(())
    }
}
