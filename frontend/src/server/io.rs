//! What each event-loop token stands for: one [`Source`] per token (crosvm's typed
//! `EventToken`), registered and removed through [`Io`], which every owner uses for the
//! descriptors it owns (log pipes, stdin pipes, debug listeners, relays).

use mio::event::Source as MioSource;
use mio::{Interest, Registry, Token};
use std::collections::HashMap;
use uuid::Uuid;

/// Which side of a debug relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// gdb's TCP connection (or the control connection of `DEBUG --stdio`).
    Client,
    /// gdbserver's stdio socket.
    Gdbserver,
}

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A control listener (index into the loop's listeners).
    Listener(usize),
    /// A client connection.
    Conn,
    /// The broker's socket.
    Broker,
    /// The broker's pidfd.
    BrokerPid,
    /// SIGTERM/SIGINT.
    Signals,
    /// The helper threads' waker.
    Waker,
    /// A program's output pipe (or its terminal's master).
    Pipe {
        /// The session.
        id: Uuid,
        /// Which stream.
        stream: proto::Stream,
    },
    /// An exec's output pipe (or terminal), relayed to its connection.
    ExecPipe {
        /// The attached connection.
        conn: Token,
    },
    /// The stdin of an attached run, watched for room while its client's input waits.
    Stdin {
        /// The attached connection.
        conn: Token,
    },
    /// A debug port waiting for gdb.
    DebugPort,
    /// One side of a debug relay.
    Relay {
        /// The relay.
        relay: u64,
        /// Which side.
        side: Side,
    },
}

/// Tokens and their sources.
#[derive(Debug)]
pub struct Io {
    registry: Registry,
    sources: HashMap<Token, Source>,
    next: usize,
}

impl Io {
    /// Tokens below `first` are the loop's fixed ones.
    pub fn new(registry: Registry, first: usize) -> Io {
        Io { registry, sources: HashMap::new(), next: first }
    }

    /// Registers `source` under a new token standing for `what`.
    pub fn register(
        &mut self,
        source: &mut impl MioSource,
        interest: Interest,
        what: Source,
    ) -> std::io::Result<Token> {
        let t = Token(self.next);
        self.next += 1;
        self.registry.register(source, t, interest)?;
        self.sources.insert(t, what);
        Ok(t)
    }

    /// Registers a fixed token.
    pub fn register_at(
        &mut self,
        source: &mut impl MioSource,
        t: Token,
        interest: Interest,
        what: Source,
    ) -> std::io::Result<()> {
        self.registry.register(source, t, interest)?;
        self.sources.insert(t, what);
        Ok(())
    }

    /// Names a token registered by other means (a `mio::Waker`).
    pub fn name(&mut self, t: Token, what: Source) {
        self.sources.insert(t, what);
    }

    /// Changes what `source` is watched for.
    pub fn reregister(&self, source: &mut impl MioSource, t: Token, interest: Interest) -> std::io::Result<()> {
        self.registry.reregister(source, t, interest)
    }

    /// Forgets `t` and stops watching `source`.
    pub fn deregister(&mut self, source: &mut impl MioSource, t: Token) {
        let _ = self.registry.deregister(source);
        self.sources.remove(&t);
    }

    /// What `t` stands for.
    pub fn source(&self, t: Token) -> Option<Source> {
        self.sources.get(&t).copied()
    }

    /// The registry (for a waker).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
