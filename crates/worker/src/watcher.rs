//! The connection watcher, and the queue of multiplexed requests waiting for a thread.
//!
//! While a request runs in the app, nobody reads its connection unless the app reads
//! its body. The watcher, a plain Rust thread that never touches Python, reads those
//! connections without blocking, every [`TICK`]: a GET_VALUES is answered, an
//! FCGI_ABORT_REQUEST marks its request (the app sees it at its next read or chunk),
//! body bytes are queued for `wsgi.input` (up to a bound), and with `threads` > 1 a new
//! request whose params are complete is claimed and queued on the [`ReadyQueue`] for a
//! free request thread. With one thread the codec refuses a second request on a busy
//! connection itself (FCGI_CANT_MPX_CONN), and the watcher sends that answer.
//!
//! The watcher also parks the idle kept-alive connections a busy thread holds once
//! their next request has waited two ticks (see [`crate::parking`]).
//!
//! Why a tick and not a poll set: registering each connection with an epoll set as its
//! request starts and ends would cost two system calls on every request, for records
//! (GET_VALUES, ABORT) that mainstream web servers never send while a request runs.
//! Connections join a plain list (no system call) and the watcher looks at them only
//! while requests are in service; after a quiet second it sleeps until the next request
//! begins, so an idle worker does not wake.

use crate::conn::{ConnCell, Shared, try_lock};
use crate::parking::{Held, Parking};
use scoreboard::{Scoreboard, SlotState};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// How often the watcher reads the connections whose requests are in the app.
pub const TICK: Duration = Duration::from_millis(2);

/// Looks in a row at which a held connection must be readable (its next request
/// waiting for its busy thread) before it is parked, when another thread or worker is
/// idle: its request has then waited 2 to 4 ms.
pub const OVERDUE_TICKS: u32 = 2;

/// The same when nobody is idle (100 ms): parking then only helps if the manager
/// starts a worker or another frees up before this thread does, and costs the system
/// calls of a hand-over.
pub const OVERDUE_TICKS_ALONE: u32 = 50;

/// Ticks without any request before the watcher sleeps until the next one (1 s).
const QUIET_TICKS: u32 = 500;

/// Requests claimed from connections whose driver is busy, for any free request thread.
/// An eventfd in every request thread's epoll set says the queue is not empty.
#[derive(Debug)]
pub struct ReadyQueue {
    queue: Mutex<VecDeque<(Shared, u64)>>,
    efd: OwnedFd,
}

impl ReadyQueue {
    /// An empty queue.
    pub fn new() -> io::Result<ReadyQueue> {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ReadyQueue {
            queue: Mutex::new(VecDeque::new()),
            // SAFETY: eventfd returned a new fd that nothing else owns.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd to wait on: readable while requests are queued.
    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd. A full counter (never in practice)
        // fails with EAGAIN, and then the fd is readable anyway.
        unsafe { libc::write(self.efd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Queue request `token` of `conn`.
    pub fn push(&self, conn: Shared, token: u64) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((conn, token));
        self.signal();
    }

    /// Take the oldest queued request. The eventfd is reset, and set again when more
    /// remain, so that another thread's wait wakes for them.
    pub fn pop(&self) -> Option<(Shared, u64)> {
        let mut count: u64 = 0;
        // SAFETY: an 8-byte read from our non-blocking eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), (&raw mut count).cast(), 8) };
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let first = queue.pop_front();
        if !queue.is_empty() {
            self.signal();
        }
        first
    }
}

/// The watcher of one worker process.
#[derive(Debug)]
pub struct Watcher {
    /// Every connection of the worker (dropped ones are pruned at each tick).
    conns: Mutex<Vec<Weak<ConnCell>>>,
    /// Requests begun so far: the watcher stays awake while it moves.
    activity: AtomicU64,
    /// The watcher sleeps until the next request (see [`Watcher::wake`]).
    sleeping: AtomicBool,
    /// `true` while asleep; cleared (and the condvar signalled) to wake it.
    asleep: Mutex<bool>,
    woken: Condvar,
    /// Where new multiplexed requests go (`threads` > 1).
    ready: Option<Arc<ReadyQueue>>,
    /// Each request thread's idle kept-alive connections, by thread index.
    held: Vec<Held>,
    /// Where overdue held connections go.
    parking: Arc<Parking>,
    /// The pool's scoreboard and this worker's slot: is another worker idle?
    board: Option<(Arc<Scoreboard>, usize)>,
}

impl Watcher {
    /// Start the watcher thread of a worker with `threads` request threads.
    pub fn start(
        ready: Option<Arc<ReadyQueue>>,
        parking: Arc<Parking>,
        board: Option<(Arc<Scoreboard>, usize)>,
        threads: usize,
    ) -> io::Result<Arc<Watcher>> {
        let watcher = Arc::new(Watcher {
            conns: Mutex::new(Vec::new()),
            activity: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            asleep: Mutex::new(false),
            woken: Condvar::new(),
            ready,
            held: (0..threads.max(1))
                .map(|_| Held::new())
                .collect::<io::Result<_>>()?,
            parking,
            board,
        });
        let thread = Arc::clone(&watcher);
        std::thread::Builder::new()
            .name("pyfpm-watcher".into())
            .spawn(move || thread.run())?;
        Ok(watcher)
    }

    /// Watch `conn` from now on (no system call).
    pub fn register(&self, conn: &Shared) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(conn));
    }

    /// Request thread `index`'s idle kept-alive connections.
    pub fn held(&self, index: usize) -> &Held {
        &self.held[index]
    }

    /// A request is about to run, or a thread waits away from its held connections:
    /// keep the watcher awake, or wake it.
    pub fn wake(&self) {
        self.activity.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let mut asleep = self.asleep.lock().unwrap_or_else(|p| p.into_inner());
            if *asleep {
                *asleep = false;
                self.sleeping.store(false, Ordering::SeqCst);
                self.woken.notify_one();
            }
        }
    }

    fn run(&self) {
        let mut quiet = 0u32;
        loop {
            let seen = self.activity.load(Ordering::SeqCst);
            std::thread::sleep(TICK);
            let busy = self.scan() | self.park_overdue();
            if busy || self.activity.load(Ordering::SeqCst) != seen {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < QUIET_TICKS {
                continue;
            }
            quiet = 0;
            let mut asleep = self.asleep.lock().unwrap_or_else(|p| p.into_inner());
            *asleep = true;
            self.sleeping.store(true, Ordering::SeqCst);
            // A request that began between the scan and here saw `sleeping` false, so
            // it did not wake us: look again before sleeping.
            if self.activity.load(Ordering::SeqCst) != seen {
                *asleep = false;
                self.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            while *asleep {
                asleep = self.woken.wait(asleep).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Park the held connections whose next request waits for a busy thread: after
    /// [`OVERDUE_TICKS`] when some other thread or worker of the pool is idle and can
    /// take it at once, after [`OVERDUE_TICKS_ALONE`] otherwise (the manager may start
    /// a worker for it, or another may free up first). `true` while some thread holds
    /// connections it is not watching.
    fn park_overdue(&self) -> bool {
        let mut unwatched = false;
        for (index, held) in self.held.iter().enumerate() {
            if !held.unwatched() {
                continue;
            }
            unwatched = true;
            if !self.parking.enabled() {
                continue;
            }
            let ticks = if self.idle_elsewhere(index) {
                OVERDUE_TICKS
            } else {
                OVERDUE_TICKS_ALONE
            };
            for conn in held.overdue(ticks) {
                if let Some(message) = self.parking.park_conn(&conn) {
                    crate::log::log(crate::log::Level::Warning, message);
                }
            }
        }
        unwatched
    }

    /// Whether a request thread other than `thread`, or another worker of the pool, is
    /// waiting for work.
    fn idle_elsewhere(&self, thread: usize) -> bool {
        let other_thread = self
            .held
            .iter()
            .enumerate()
            .any(|(i, h)| i != thread && h.is_polling());
        other_thread
            || self.board.as_ref().is_some_and(|(board, own)| {
                (0..board.slots())
                    .filter(|&i| i != *own)
                    .any(|i| board.slot(i).state() == SlotState::Idle)
            })
    }

    /// Read every connection whose requests are in service and that no thread is
    /// reading or driving. `true` when some request was in service.
    fn scan(&self) -> bool {
        let conns: Vec<Shared> = {
            let mut list = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut busy = false;
        for shared in &conns {
            let Some(mut conn) = try_lock(shared) else {
                // Someone is writing or deciding: it is in service, look next tick.
                busy = true;
                continue;
            };
            if conn.is_closed() || conn.driver || conn.is_idle() {
                continue;
            }
            busy = true;
            // A failure is recorded in the connection, where its requests see it.
            let _ = conn.check_incoming();
            if let Some(ready) = &self.ready {
                while let Some(token) = conn.claim_ready() {
                    ready.push(Arc::clone(shared), token);
                }
            }
        }
        busy
    }
}
