//! The scaling planner: given a pool's settings, what its workers are doing and the
//! time, decide how many workers to spawn and which one to retire. PHP-FPM's
//! `fpm_pctl_perform_idle_server_maintenance` and `fpm_pctl_on_socket_accept`, as a pure
//! function so every rule is unit-tested with a fake clock.
//!
//! The planner sees only the workers that count towards the pool's size: a worker being
//! stopped, or retiring and waiting for its replacement, is left out by the caller (its
//! replacement, still starting, is in). The one piece of memory it keeps between calls
//! is [`Memory`]: the spawn rate that doubles while a pool stays short of workers, and
//! whether the "max_children reached" warning was already given in this episode.

use pyfpm_config::PmMode;
use std::time::{Duration, Instant};

/// The spawn count at which PHP-FPM starts warning that a pool "seems busy".
pub const BUSY_WARNING_RATE: u32 = 8;

/// What one counted worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Spawned, not yet accepting.
    Starting,
    /// Waiting for a connection since the instant given.
    Idle {
        /// When it was first seen idle after its last request.
        since: Instant,
    },
    /// Serving a request.
    Busy,
}

/// One counted worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Its pid (what [`Action::Retire`] names).
    pub pid: i32,
    /// What it is doing.
    pub status: Status,
}

/// Connections waiting in the pool's listen queues (ondemand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// None (no listening socket is readable).
    No,
    /// This many, as the kernel reports for a TCP listener.
    Count(u32),
    /// Some, but the socket cannot tell how many (a Unix socket).
    Some,
}

/// Why the planner was called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The 1 s maintenance tick.
    Tick,
    /// A listening socket became readable (ondemand), or anything else between ticks:
    /// static pools refill, ondemand pools serve a waiting connection when nothing is
    /// idle or starting; spawn rates are left alone.
    Event,
}

/// Everything the planner looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The pool's mode and its settings.
    pub pm: PmMode,
    /// `pm.max_children`.
    pub max_children: u32,
    /// static: how many workers to keep (`pm.max_children`, moved by SIGTTIN/SIGTTOU).
    pub target: u32,
    /// dynamic: whether the pool has been started (`pm.start_servers` spawned).
    pub started: bool,
    /// The counted workers.
    pub workers: &'a [View],
    /// Waiting connections (ondemand; [`Waiting::No`] for the other modes).
    pub waiting: Waiting,
    /// Why it runs.
    pub trigger: Trigger,
    /// The clock.
    pub now: Instant,
}

/// What the planner remembers between calls, per pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Workers to spawn on the next short tick (1, 2, 4, ... up to `pm.max_spawn_rate`).
    pub spawn_rate: u32,
    /// The max_children warning was logged and the pool has not dropped below since.
    pub warned_max_children: bool,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            spawn_rate: 1,
            warned_max_children: false,
        }
    }
}

/// One decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start this many workers.
    Spawn(u32),
    /// Gracefully stop this idle worker (SIGQUIT, SIGKILL after process_control_timeout).
    Retire {
        /// The worker.
        pid: i32,
        /// Why, for the log line.
        why: RetireWhy,
    },
    /// Log "server reached pm.max_children setting" (once per episode).
    MaxChildrenReached,
    /// Log PHP-FPM's "seems busy" warning: spawning `rate`, with `idle` idle of `total`.
    SeemsBusy {
        /// The spawn rate this tick.
        rate: u32,
        /// Idle workers.
        idle: u32,
        /// All counted workers.
        total: u32,
    },
}

/// Why the planner retires a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireWhy {
    /// dynamic: more than `pm.max_spare_servers` idle workers (the count is given).
    TooManyIdle(u32),
    /// ondemand: idle longer than `pm.process_idle_timeout` (for how long).
    IdleTimeout(Duration),
    /// static: more workers than the target (after SIGTTOU).
    AboveTarget,
}

struct Counts {
    idle: u32,
    starting: u32,
    total: u32,
}

fn counts(workers: &[View]) -> Counts {
    let mut c = Counts {
        idle: 0,
        starting: 0,
        total: workers.len() as u32,
    };
    for w in workers {
        match w.status {
            Status::Idle { .. } => c.idle += 1,
            Status::Starting => c.starting += 1,
            Status::Busy => {}
        }
    }
    c
}

/// The idle worker idle longest, and since when.
fn longest_idle(workers: &[View]) -> Option<(i32, Instant)> {
    workers
        .iter()
        .filter_map(|w| match w.status {
            Status::Idle { since } => Some((w.pid, since)),
            _ => None,
        })
        .min_by_key(|&(pid, since)| (since, pid))
}

/// Decide what to do for one pool now.
pub fn plan(input: &Input<'_>, memory: &mut Memory) -> Vec<Action> {
    let c = counts(input.workers);
    match input.pm {
        PmMode::Static => plan_static(input, &c),
        PmMode::Dynamic {
            start_servers,
            min_spare_servers,
            max_spare_servers,
            max_spawn_rate,
        } => {
            if !input.started {
                let n = start_servers
                    .min(input.max_children)
                    .saturating_sub(c.total);
                return if n > 0 {
                    vec![Action::Spawn(n)]
                } else {
                    vec![]
                };
            }
            if input.trigger != Trigger::Tick {
                return Vec::new();
            }
            plan_dynamic(
                input,
                &c,
                memory,
                min_spare_servers,
                max_spare_servers,
                max_spawn_rate,
            )
        }
        PmMode::Ondemand {
            process_idle_timeout,
            max_spawn_rate,
        } => plan_ondemand(input, &c, memory, process_idle_timeout, max_spawn_rate),
    }
}

fn plan_static(input: &Input<'_>, c: &Counts) -> Vec<Action> {
    if c.total < input.target {
        return vec![Action::Spawn(input.target - c.total)];
    }
    if c.total > input.target && input.trigger == Trigger::Tick {
        // Prefer an idle worker; otherwise the newest (it has the least warm state).
        let pid = longest_idle(input.workers)
            .map(|(pid, _)| pid)
            .or_else(|| input.workers.last().map(|w| w.pid));
        if let Some(pid) = pid {
            return vec![Action::Retire {
                pid,
                why: RetireWhy::AboveTarget,
            }];
        }
    }
    Vec::new()
}

fn plan_dynamic(
    input: &Input<'_>,
    c: &Counts,
    memory: &mut Memory,
    min_spare: u32,
    max_spare: u32,
    max_spawn_rate: u32,
) -> Vec<Action> {
    if c.idle > max_spare {
        memory.spawn_rate = 1;
        if let Some((pid, _)) = longest_idle(input.workers) {
            return vec![Action::Retire {
                pid,
                why: RetireWhy::TooManyIdle(c.idle),
            }];
        }
    }
    // A starting worker will be idle in a moment: counting it stops a slow app import
    // from triggering a new wave every second.
    let available = c.idle + c.starting;
    if available >= min_spare {
        memory.spawn_rate = 1;
        return Vec::new();
    }
    if c.total >= input.max_children {
        memory.spawn_rate = 1;
        return max_children_reached(memory);
    }
    let mut out = Vec::new();
    let rate = memory.spawn_rate.clamp(1, max_spawn_rate);
    if rate >= BUSY_WARNING_RATE {
        out.push(Action::SeemsBusy {
            rate,
            idle: c.idle,
            total: c.total,
        });
    }
    let n = rate
        .min(min_spare - available)
        .min(input.max_children - c.total);
    memory.warned_max_children = false;
    out.push(Action::Spawn(n));
    memory.spawn_rate = (rate * 2).min(max_spawn_rate);
    out
}

fn plan_ondemand(
    input: &Input<'_>,
    c: &Counts,
    memory: &mut Memory,
    idle_timeout: Duration,
    max_spawn_rate: u32,
) -> Vec<Action> {
    let mut out = Vec::new();
    if input.trigger == Trigger::Tick {
        if let Some((pid, since)) = longest_idle(input.workers) {
            let idle_for = input.now.saturating_duration_since(since);
            if idle_for > idle_timeout {
                out.push(Action::Retire {
                    pid,
                    why: RetireWhy::IdleTimeout(idle_for),
                });
            }
        }
    }
    if input.waiting == Waiting::No || c.idle > 0 {
        if input.trigger == Trigger::Tick {
            memory.spawn_rate = 1;
        }
        if input.waiting == Waiting::No {
            memory.warned_max_children = false;
        }
        return out;
    }
    // A connection waits and no worker is idle.
    if c.total >= input.max_children {
        out.extend(max_children_reached(memory));
        return out;
    }
    let room = input.max_children - c.total;
    let wanted = match (input.waiting, input.trigger) {
        // The kernel says how many wait: that many workers, less those on their way.
        (Waiting::Count(n), _) => n.saturating_sub(c.starting),
        // Unknown: between ticks only when nothing is on its way (one per readiness
        // edge, as PHP-FPM); on a tick, the doubling rate.
        (_, Trigger::Event) => u32::from(c.starting == 0),
        (_, Trigger::Tick) => memory
            .spawn_rate
            .clamp(1, max_spawn_rate)
            .saturating_sub(c.starting),
    };
    let n = wanted.min(max_spawn_rate).min(room);
    if input.trigger == Trigger::Tick {
        memory.spawn_rate = (memory.spawn_rate.max(1) * 2).min(max_spawn_rate);
    }
    if n > 0 {
        out.push(Action::Spawn(n));
    }
    out
}

fn max_children_reached(memory: &mut Memory) -> Vec<Action> {
    if memory.warned_max_children {
        Vec::new()
    } else {
        memory.warned_max_children = true;
        vec![Action::MaxChildrenReached]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYN: PmMode = PmMode::Dynamic {
        start_servers: 3,
        min_spare_servers: 2,
        max_spare_servers: 4,
        max_spawn_rate: 8,
    };
    const OD: PmMode = PmMode::Ondemand {
        process_idle_timeout: Duration::from_secs(10),
        max_spawn_rate: 4,
    };

    /// A fake clock: `t(s)` is `s` seconds after a fixed origin.
    struct Clock(Instant);
    impl Clock {
        fn t(&self, secs: u64) -> Instant {
            self.0 + Duration::from_secs(secs)
        }
    }

    /// Workers from a compact description: `S` starting, `B` busy, a digit = idle since
    /// that second.
    fn workers(clock: &Clock, spec: &str) -> Vec<View> {
        spec.chars()
            .enumerate()
            .map(|(i, ch)| View {
                pid: 100 + i as i32,
                status: match ch {
                    'S' => Status::Starting,
                    'B' => Status::Busy,
                    d => Status::Idle {
                        since: clock.t(d.to_digit(10).expect("digit") as u64),
                    },
                },
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        pm: PmMode,
        max_children: u32,
        target: u32,
        started: bool,
        workers: &'static str,
        waiting: Waiting,
        trigger: Trigger,
        now: u64,
        memory: Memory,
        expect: Vec<Action>,
        memory_after: Memory,
    }

    fn mem(spawn_rate: u32, warned: bool) -> Memory {
        Memory {
            spawn_rate,
            warned_max_children: warned,
        }
    }

    fn base(name: &'static str, pm: PmMode) -> Case {
        Case {
            name,
            pm,
            max_children: 6,
            target: 3,
            started: true,
            workers: "",
            waiting: Waiting::No,
            trigger: Trigger::Tick,
            now: 20,
            memory: Memory::default(),
            expect: vec![],
            memory_after: Memory::default(),
        }
    }

    fn run(cases: Vec<Case>) {
        let clock = Clock(Instant::now());
        for case in cases {
            let ws = workers(&clock, case.workers);
            let mut memory = case.memory;
            let got = plan(
                &Input {
                    pm: case.pm,
                    max_children: case.max_children,
                    target: case.target,
                    started: case.started,
                    workers: &ws,
                    waiting: case.waiting,
                    trigger: case.trigger,
                    now: clock.t(case.now),
                },
                &mut memory,
            );
            assert_eq!(got, case.expect, "{}", case.name);
            assert_eq!(memory, case.memory_after, "{} (memory)", case.name);
        }
    }

    #[test]
    fn static_pools_keep_the_target() {
        run(vec![
            Case {
                workers: "B",
                expect: vec![Action::Spawn(2)],
                trigger: Trigger::Event,
                ..base("refills between ticks", PmMode::Static)
            },
            Case {
                workers: "BS1",
                ..base("full: nothing", PmMode::Static)
            },
            Case {
                workers: "B52B",
                expect: vec![Action::Retire {
                    pid: 102,
                    why: RetireWhy::AboveTarget,
                }],
                ..base("above target retires the longest idle", PmMode::Static)
            },
            Case {
                workers: "BBBB",
                expect: vec![Action::Retire {
                    pid: 103,
                    why: RetireWhy::AboveTarget,
                }],
                ..base("above target, none idle: the newest", PmMode::Static)
            },
            Case {
                workers: "B52B",
                trigger: Trigger::Event,
                ..base("retiring waits for the tick", PmMode::Static)
            },
        ]);
    }

    #[test]
    fn dynamic_start_servers_then_spare_rules() {
        run(vec![
            Case {
                started: false,
                expect: vec![Action::Spawn(3)],
                ..base("start-up spawns pm.start_servers", DYN)
            },
            Case {
                started: false,
                max_children: 2,
                expect: vec![Action::Spawn(2)],
                ..base("start_servers capped by max_children", DYN)
            },
            Case {
                workers: "BBB",
                trigger: Trigger::Event,
                ..base("nothing between ticks", DYN)
            },
            Case {
                workers: "11B",
                ..base("enough spares: nothing", DYN)
            },
            Case {
                workers: "1S",
                ..base("starting workers count as spares", DYN)
            },
            Case {
                workers: "B",
                expect: vec![Action::Spawn(1)],
                memory_after: mem(2, false),
                ..base("short of spares: spawn 1, rate doubles", DYN)
            },
            Case {
                workers: "BB",
                memory: mem(2, false),
                expect: vec![Action::Spawn(2)],
                memory_after: mem(4, false),
                ..base("second tick spawns 2", DYN)
            },
            Case {
                workers: "BBB",
                memory: mem(4, false),
                expect: vec![Action::Spawn(2)],
                memory_after: mem(8, false),
                ..base("spawn bounded by min_spare - idle", DYN)
            },
            Case {
                max_children: 40,
                pm: PmMode::Dynamic {
                    start_servers: 20,
                    min_spare_servers: 20,
                    max_spare_servers: 30,
                    max_spawn_rate: 12,
                },
                workers: "BBBB",
                memory: mem(8, false),
                expect: vec![
                    Action::SeemsBusy {
                        rate: 8,
                        idle: 0,
                        total: 4,
                    },
                    Action::Spawn(8),
                ],
                memory_after: mem(12, false),
                ..base("rate 8 warns and doubling stops at max_spawn_rate", DYN)
            },
            Case {
                workers: "BBBBB",
                memory: mem(8, false),
                expect: vec![
                    Action::SeemsBusy {
                        rate: 8,
                        idle: 0,
                        total: 5,
                    },
                    Action::Spawn(1),
                ],
                memory_after: mem(8, false),
                ..base("spawn bounded by max_children", DYN)
            },
            Case {
                workers: "BBBBBB",
                memory: mem(4, false),
                expect: vec![Action::MaxChildrenReached],
                memory_after: mem(1, true),
                ..base("max_children reached warns", DYN)
            },
            Case {
                workers: "BBBBBB",
                memory: mem(1, true),
                memory_after: mem(1, true),
                ..base("... once per episode", DYN)
            },
            Case {
                workers: "BBBB1",
                memory: mem(1, true),
                expect: vec![Action::Spawn(1)],
                memory_after: mem(2, false),
                ..base("a spawn ends the episode", DYN)
            },
            Case {
                workers: "73591",
                memory: mem(4, false),
                expect: vec![Action::Retire {
                    pid: 104,
                    why: RetireWhy::TooManyIdle(5),
                }],
                ..base(
                    "too many idle: retire the one idle longest, one per tick",
                    DYN,
                )
            },
            Case {
                workers: "3333",
                ..base("exactly max_spare idle: nothing", DYN)
            },
        ]);
    }

    #[test]
    fn ondemand_spawns_for_the_waiting_load_and_retires_idle_workers() {
        run(vec![
            Case {
                target: 0,
                ..base("nothing waits, no worker: nothing", OD)
            },
            Case {
                waiting: Waiting::Some,
                trigger: Trigger::Event,
                expect: vec![Action::Spawn(1)],
                ..base("readiness with nothing idle: one worker", OD)
            },
            Case {
                waiting: Waiting::Some,
                trigger: Trigger::Event,
                workers: "S",
                ..base("readiness while one is starting: wait for it", OD)
            },
            Case {
                waiting: Waiting::Count(3),
                trigger: Trigger::Event,
                expect: vec![Action::Spawn(3)],
                ..base("a TCP queue of 3: three workers at once", OD)
            },
            Case {
                waiting: Waiting::Count(9),
                trigger: Trigger::Event,
                workers: "S",
                expect: vec![Action::Spawn(4)],
                ..base("bounded by the spawn rate", OD)
            },
            Case {
                waiting: Waiting::Count(9),
                workers: "BBBB",
                expect: vec![Action::Spawn(2)],
                memory_after: mem(2, false),
                ..base("bounded by max_children", OD)
            },
            Case {
                waiting: Waiting::Count(2),
                workers: "B5",
                now: 8,
                ..base("an idle worker will take it", OD)
            },
            Case {
                waiting: Waiting::Some,
                workers: "BS",
                memory: mem(2, false),
                expect: vec![Action::Spawn(1)],
                memory_after: mem(4, false),
                ..base("unknown queue on a tick: the doubling rate", OD)
            },
            Case {
                waiting: Waiting::Some,
                workers: "BBBBBB",
                expect: vec![Action::MaxChildrenReached],
                memory_after: mem(1, true),
                ..base("full: max_children warning", OD)
            },
            Case {
                workers: "BBBBBB",
                memory: mem(1, true),
                ..base("queue drained: the episode ends", OD)
            },
            Case {
                workers: "B59",
                now: 16,
                expect: vec![Action::Retire {
                    pid: 101,
                    why: RetireWhy::IdleTimeout(Duration::from_secs(11)),
                }],
                ..base("idle past the timeout: the longest idle retires", OD)
            },
            Case {
                workers: "B59",
                now: 15,
                ..base("idle exactly the timeout: kept", OD)
            },
            Case {
                workers: "11",
                now: 15,
                trigger: Trigger::Event,
                ..base("retiring waits for the tick", OD)
            },
        ]);
    }
}
