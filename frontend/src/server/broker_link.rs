//! The frontend's end of the broker socketpair: requests go out with a tag, and each tag
//! remembers which owner asked, so that the loop hands the reply to that owner (the start
//! of a command and its completion live in the same module). Events come with tag 0.

use proto::Code;
use shared::{Refusal, Reply, Request, Tube, TubeError};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};

/// The owner waiting for a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Loading uploads.
    Uploads,
    /// START, STOP, KILL, DELETE.
    Lifecycle,
    /// DEBUG.
    Debug,
    /// An attached client's signals.
    Attach,
    /// GET and PUT: files helpers.
    Files,
    /// EXEC.
    Execs,
}

/// What came from the broker.
#[derive(Debug)]
pub enum Incoming {
    /// An event (tag 0).
    Event(Reply),
    /// The reply to request `tag` of `owner`.
    Reply {
        /// Who asked.
        owner: Owner,
        /// The request's tag.
        tag: u64,
        /// The reply.
        reply: Reply,
    },
    /// A reply to nothing we asked: a broken broker.
    Stray(u64, Reply),
}

/// The broker link.
#[derive(Debug)]
pub struct BrokerLink {
    tube: Tube,
    waiting: HashMap<u64, Owner>,
    next_tag: u64,
}

/// The one mapping from a broker refusal to a protocol error code.
pub fn refusal_code(r: Refusal) -> Code {
    match r {
        Refusal::NotFound => Code::NotFound,
        Refusal::InvalidState => Code::InvalidState,
        Refusal::BadRequest => Code::BadRequest,
        Refusal::LimitReached => Code::LimitReached,
        Refusal::Internal => Code::Internal,
        Refusal::Unsupported => Code::Unsupported,
    }
}

impl BrokerLink {
    /// Wraps the tube (after the hello, which used tag 1).
    pub fn new(tube: Tube) -> BrokerLink {
        BrokerLink { tube, waiting: HashMap::new(), next_tag: 2 }
    }

    /// Sends a request for `owner`; its tag, or the refusal a client gets when the broker
    /// is gone.
    pub fn send(&mut self, owner: Owner, req: Request) -> Result<u64, proto::Error> {
        self.next_tag += 1;
        let tag = self.next_tag;
        match self.tube.send(tag, req) {
            Ok(()) => {
                self.waiting.insert(tag, owner);
                Ok(tag)
            }
            Err(e) => {
                log::error!("broker link: {e}");
                Err(proto::Error::internal("the broker is unavailable"))
            }
        }
    }

    /// Sends a request nobody waits an answer for (shutdown).
    pub fn notify(&mut self, req: Request) -> Result<(), TubeError> {
        self.tube.send(0, req)
    }

    /// The next message, if one is waiting.
    pub fn recv(&mut self) -> Result<Option<Incoming>, TubeError> {
        Ok(self.tube.recv::<Reply>()?.map(|(tag, reply)| {
            if tag == 0 {
                return Incoming::Event(reply);
            }
            match self.waiting.remove(&tag) {
                Some(owner) => Incoming::Reply { owner, tag, reply },
                None => Incoming::Stray(tag, reply),
            }
        }))
    }

    /// Sends what waits for the socket to become writable.
    pub fn flush(&mut self) -> Result<(), TubeError> {
        self.tube.flush()
    }

    /// Whether messages wait for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.tube.wants_write()
    }
}

impl AsRawFd for BrokerLink {
    fn as_raw_fd(&self) -> RawFd {
        self.tube.as_raw_fd()
    }
}
