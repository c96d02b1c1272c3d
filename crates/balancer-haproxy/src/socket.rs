//! The Runtime API client: one command per connection on the unix stats socket (HAProxy answers
//! and closes), with a deadline; `set` commands succeed only when HAProxy prints nothing.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::HaproxyError;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RuntimeApi {
    socket: PathBuf,
}

impl RuntimeApi {
    pub fn new(socket: PathBuf) -> Self {
        RuntimeApi { socket }
    }

    /// Sends one command line and returns HAProxy's whole answer.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        // `;` separates commands: callers escape it (`\;`) where it is data.
        debug_assert!(!command.contains('\n'));
        let path = self.socket.display().to_string();
        let io = |source| HaproxyError::Socket {
            path: path.clone(),
            source,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await.map_err(io)?;
            stream
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(io)?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.map_err(io)?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| HaproxyError::Timeout(path.clone()))?
    }

    /// A command that prints nothing on success; any text is HAProxy's error.
    pub async fn set(&self, command: &str) -> Result<(), HaproxyError> {
        let answer = self.command(command).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command: command.to_string(),
                answer: answer.trim().to_string(),
            })
        }
    }
}
