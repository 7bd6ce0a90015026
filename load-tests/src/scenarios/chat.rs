//! `chat`: C engagements, each with an anonymous customer and an agent, both
//! sending messages (and some typing) at a total rate.
//!
//! Setup per engagement: the customer connects and `StartEngagement`s; the
//! agent connects with a token and `JoinChannel`s the sid from the result.
//! Then every session sends `SendMessage` at `rate / (2 C)` per second, each
//! preceded by a `SendTyping` with probability `--typing-share`, for `--run`
//! seconds. Every message is delivered to 2 sessions (the other party and
//! the author's own echo); the latency is measured at the other party.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use crate::cli::ChatArgs;
use crate::conn::{count_close, Ev, Login, Session};
use crate::procfs;
use crate::proto::Op;
use crate::report::Report;
use crate::stats::now_ns;
use crate::target::Route;
use crate::Ctx;

use super::Rng;

const NAME: &str = "chat";

/// Phases broadcast to all sessions.
const SETUP: u8 = 0;
const RUN: u8 = 1;
const DRAIN: u8 = 2;
const STOP: u8 = 3;

struct Shared {
    setup_done: Cell<usize>,
    ready: Cell<usize>,
    alive: Cell<usize>,
    /// Commands sent and not yet answered, all sessions.
    inflight: Cell<u64>,
    notify: Notify,
}

pub async fn run(ctx: Rc<Ctx>, a: ChatArgs) -> Report {
    let stats = ctx.stats.clone();
    let c = a.engagements.max(1);
    // Connection 2i is engagement i's customer and 2i + 1 its agent: with
    // several URLs the two are always on different ones.
    let spread = match ctx.spread(2 * c) {
        Ok(s) => s,
        Err(e) => return ctx.failed(NAME, e),
    };
    ctx.set_phase("setup", c as u64);
    let (phase_tx, phase_rx) = watch::channel(SETUP);
    let sh = Rc::new(Shared {
        setup_done: Cell::new(0),
        ready: Cell::new(0),
        alive: Cell::new(0),
        inflight: Cell::new(0),
        notify: Notify::new(),
    });
    let sem = Rc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let per_session_rate = a.rate / (2.0 * c as f64);
    let body: Rc<str> = super::body(a.body_bytes).into();
    for i in 0..c {
        let login = match ctx.agent(&format!("load-{}-agent-{i}", ctx.run_id)) {
            Ok(l) => l,
            Err(e) => return finish(&ctx, ctx.failed(NAME, e), &phase_tx, &sh).await,
        };
        tokio::task::spawn_local(engagement(
            ctx.clone(),
            sh.clone(),
            sem.clone(),
            (spread.route(2 * i), spread.route(2 * i + 1)),
            login,
            i as u64,
            per_session_rate,
            a.clone(),
            body.clone(),
            phase_rx.clone(),
        ));
    }
    let cutoff = ctx.cutoff();
    tokio::pin!(cutoff);
    let mut stop_reason = None;
    while sh.setup_done.get() < c {
        tokio::select! {
            _ = sh.notify.notified() => {}
            _ = &mut cutoff => { stop_reason = ctx.stop_reason(); break; }
        }
    }
    let ready = sh.ready.get();
    if ready == 0 || stop_reason.is_some() {
        let mut r = ctx.failed(
            NAME,
            stop_reason.unwrap_or_else(|| "no engagement could be set up".into()),
        );
        r.param("engagements", c);
        return finish(&ctx, r, &phase_tx, &sh).await;
    }

    // Measured phase: run, then drain.
    let run_for = Duration::from_secs(a.run);
    ctx.set_phase("chat", a.run * 1000);
    let start = procfs::sample(&ctx.common.server_pid);
    let _ = phase_tx.send(RUN);
    let t_run = tokio::time::Instant::now();
    let run_end = ctx.within(run_for);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                stats.borrow_mut().progress = t_run.elapsed().as_millis() as u64;
            }
            _ = tokio::time::sleep_until(run_end) => break,
            _ = &mut cutoff => break,
        }
    }
    let run_s = t_run.elapsed().as_secs_f64();
    let _ = phase_tx.send(DRAIN);
    let drain = ctx.within(Duration::from_secs(ctx.common.drain));
    loop {
        let (acked, tagged) = {
            let s = stats.borrow();
            (s.acked, s.tagged_deliveries)
        };
        if sh.inflight.get() == 0 && tagged >= 2 * acked {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = tokio::time::sleep_until(drain) => break,
        }
    }
    stop_reason = ctx.stop_reason();
    let end = procfs::sample(&ctx.common.server_pid);

    let acked = stats.borrow().acked;
    let mut r = ctx.report(NAME, &stats.borrow(), &start, &end, stop_reason);
    r.param("engagements", c);
    r.param("rate", a.rate);
    r.param("typing_share", a.typing_share);
    r.param("run", a.run);
    r.param("body_bytes", a.body_bytes);
    r.param("window", a.window);
    r.expect_deliveries(2 * acked);
    r.metrics.insert("engagements set up", ready as f64);
    r.metrics
        .insert("run seconds", (run_s * 100.0).round() / 100.0);
    if run_s > 0.0 {
        r.metrics
            .insert("messages/s (acked)", (acked as f64 / run_s).round());
    }
    let target_deliveries = 2.0 * a.rate * ready as f64 / c as f64;
    r.metrics
        .insert("deliveries/s (target)", target_deliveries.round());
    if ctx.is_broker() {
        let cpu = r.server.as_ref().and_then(|s| s.cpu_us_per_delivery);
        r.check_max("broker CPU per delivery (budget)", cpu, 6.5, "µs");
        let p99_ms = r.latency_us.map(|l| l.p99 / 1000.0);
        r.check_max("latency p99 (budget)", p99_ms, 2.0, "ms");
    }
    let achieved = r.deliveries.per_s;
    r.check_min(
        "deliveries/s reached 95% of target",
        Some(achieved.round()),
        (0.95 * target_deliveries).round(),
        "/s",
    );
    r.check_clean();
    finish(&ctx, r, &phase_tx, &sh).await
}

async fn finish(ctx: &Ctx, r: Report, phase_tx: &watch::Sender<u8>, sh: &Shared) -> Report {
    let _ = phase_tx.send(STOP);
    ctx.set_phase("close", 0);
    super::wait_closed(&sh.alive, &sh.notify).await;
    r
}

#[allow(clippy::too_many_arguments)]
async fn engagement(
    ctx: Rc<Ctx>,
    sh: Rc<Shared>,
    sem: Rc<Semaphore>,
    route: (Route, Route),
    login: Login,
    i: u64,
    rate: f64,
    a: ChatArgs,
    body: Rc<str>,
    mut phase: watch::Receiver<u8>,
) {
    let stats = ctx.stats.clone();
    sh.alive.set(sh.alive.get() + 1);
    let setup = async {
        let _permit = sem.acquire().await.ok()?;
        let mut cust = Session::open(&ctx.cfg, route.0, &Login::Anonymous, &stats)
            .await
            .ok()?;
        let topic = super::channel_name(&ctx.run_id, i);
        let sid = match cust.start_channel(&topic).await {
            Ok(sid) => sid,
            Err(k) => {
                stats.borrow_mut().error(k);
                cust.close(Duration::from_secs(1)).await;
                return None;
            }
        };
        let mut agent = match Session::open(&ctx.cfg, route.1, &login, &stats).await {
            Ok(s) => s,
            Err(_) => {
                cust.close(Duration::from_secs(1)).await;
                return None;
            }
        };
        if let Err(k) = agent.attach(&sid, true).await {
            stats.borrow_mut().error(k);
            cust.close(Duration::from_secs(1)).await;
            agent.close(Duration::from_secs(1)).await;
            return None;
        }
        Some((cust, agent, sid))
    };
    let res = tokio::select! {
        r = setup => r,
        _ = phase.wait_for(|p| *p >= STOP) => None,
    };
    sh.setup_done.set(sh.setup_done.get() + 1);
    let Some((cust, agent, sid)) = res else {
        sh.alive.set(sh.alive.get() - 1);
        sh.notify.notify_one();
        return;
    };
    sh.ready.set(sh.ready.get() + 1);
    stats.borrow_mut().progress += 1;
    sh.notify.notify_one();
    let sid: Rc<str> = sid.into();
    // The agent runs in its own task; the customer in this one.
    sh.alive.set(sh.alive.get() + 1);
    tokio::task::spawn_local(chatter(
        ctx.clone(),
        sh.clone(),
        agent,
        sid.clone(),
        rate,
        a.clone(),
        body.clone(),
        phase.clone(),
        2 * i + 1,
    ));
    chatter(ctx, sh, cust, sid, rate, a, body, phase, 2 * i).await;
}

/// One session sending at `rate` per second while the phase is RUN, and
/// reading all the time.
#[allow(clippy::too_many_arguments)]
async fn chatter(
    ctx: Rc<Ctx>,
    sh: Rc<Shared>,
    mut sess: Session,
    sid: Rc<str>,
    rate: f64,
    a: ChatArgs,
    body: Rc<str>,
    mut phase_rx: watch::Receiver<u8>,
    seed: u64,
) {
    let stats = ctx.stats.clone();
    let mut rng = Rng::new(seed + 1);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let first = tokio::time::Instant::now() + period.mul_f64(rng.unit());
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Ids and kinds of the commands in flight, in order (true = typing).
    let mut pending: VecDeque<(u64, bool)> = VecDeque::with_capacity(a.window);
    let mut phase = *phase_rx.borrow_and_update();
    let mut closed = false;
    let typing_action = sess.action(Op::SendTyping { sid: &sid });
    let send_action = sess.action(Op::SendMessage {
        sid: &sid,
        body: &body,
        t: 0,
    });
    while phase < STOP {
        tokio::select! {
            biased;
            ev = sess.next_ev() => match ev {
                Ev::Reply { id, error } => {
                    let front = pending.pop_front();
                    sh.inflight.set(sh.inflight.get().saturating_sub(1));
                    let mut s = stats.borrow_mut();
                    if id.is_none() || id != front.map(|f| f.0) {
                        s.error("reply out of command order");
                    }
                    let typing = front.map(|f| f.1);
                    match (error, typing) {
                        (None, Some(false)) => s.acked += 1,
                        (None, _) => {}
                        (Some(code), Some(true)) => s.error(format!("{typing_action}: {code}")),
                        (Some(code), _) => s.error(format!("{send_action}: {code}")),
                    }
                }
                Ev::Closed(c) => {
                    count_close(&stats, c);
                    sh.inflight.set(sh.inflight.get().saturating_sub(pending.len() as u64));
                    closed = true;
                    break;
                }
                _ => {}
            },
            r = phase_rx.changed() => {
                if r.is_err() { break; }
                phase = *phase_rx.borrow_and_update();
            }
            _ = tick.tick(), if phase == RUN => {
                if pending.len() + 2 > a.window {
                    stats.borrow_mut().skipped_sends += 1;
                    continue;
                }
                let typing = a.typing_share > 0.0 && rng.unit() < a.typing_share;
                if typing {
                    match sess.send_op(Op::SendTyping { sid: &sid }, true).await {
                        Ok(id) => {
                            pending.push_back((id, true));
                            sh.inflight.set(sh.inflight.get() + 1);
                            stats.borrow_mut().typing_sent += 1;
                        }
                        Err(e) => { stats.borrow_mut().error(e.key(typing_action)); break; }
                    }
                }
                let op = Op::SendMessage { sid: &sid, body: &body, t: now_ns() };
                match sess.send_op(op, false).await {
                    Ok(id) => {
                        pending.push_back((id, false));
                        sh.inflight.set(sh.inflight.get() + 1);
                        stats.borrow_mut().sent += 1;
                    }
                    Err(e) => { stats.borrow_mut().error(e.key(send_action)); break; }
                }
            }
        }
    }
    if !closed {
        sh.inflight
            .set(sh.inflight.get().saturating_sub(pending.len() as u64));
        sess.close(Duration::from_secs(2)).await;
    }
    sh.alive.set(sh.alive.get() - 1);
    sh.notify.notify_one();
}
