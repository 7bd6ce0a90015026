//! `fanout`: one channel, N observers, one publisher.
//!
//! The publisher is an anonymous customer who starts an engagement; the
//! observers are agents that `Subscribe` to (or `JoinChannel`) its channel
//! (on the uWS peer: a subscription to one topic, all of them).
//! Once every observer is attached, the publisher sends M messages, keeping
//! at most `--window` unacknowledged (and at most `--rate` per second if
//! given). The measured phase runs from the first send until every observer
//! has received all M messages (or the drain time runs out).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use crate::cli::{FanoutArgs, ObserveMode};
use crate::conn::{count_close, Ev, Login, Push, Session};
use crate::procfs;
use crate::proto::Op;
use crate::report::Report;
use crate::stats::now_ns;
use crate::target::Route;
use crate::Ctx;

const NAME: &str = "fanout";

struct Shared {
    /// Observers attached (or failed) so far.
    setup_done: Cell<usize>,
    ready: Cell<usize>,
    /// Observers that received every message.
    complete: Cell<usize>,
    /// Observer tasks still running.
    alive: Cell<usize>,
    notify: Notify,
}

pub async fn run(ctx: Rc<Ctx>, a: FanoutArgs) -> Report {
    let stats = ctx.stats.clone();
    let spread = match ctx.spread(a.observers + 1) {
        Ok(s) => s,
        Err(e) => return ctx.failed(NAME, e),
    };
    ctx.set_phase("connect", a.observers as u64 + 1);

    // The publisher: a customer and its engagement.
    let mut publ = match Session::open(&ctx.cfg, spread.route(0), &Login::Anonymous, &stats).await {
        Ok(s) => s,
        Err(e) => return ctx.failed(NAME, format!("publisher: {e}")),
    };
    // Past any chat engagement's number.
    let topic = super::channel_name(&ctx.run_id, u64::MAX);
    let sid = match publ.start_channel(&topic).await {
        Ok(sid) => sid,
        Err(k) => return ctx.failed(NAME, k),
    };
    stats.borrow_mut().progress += 1;

    // The observers.
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let sh = Rc::new(Shared {
        setup_done: Cell::new(0),
        ready: Cell::new(0),
        complete: Cell::new(0),
        alive: Cell::new(0),
        notify: Notify::new(),
    });
    let sem = Rc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let sid: Rc<str> = sid.into();
    for i in 0..a.observers {
        let login = match ctx.agent(&format!("load-{}-obs-{i}", ctx.run_id)) {
            Ok(l) => l,
            Err(e) => return finish(&ctx, &a, ctx.failed(NAME, e), &phase_tx, &sh).await,
        };
        sh.alive.set(sh.alive.get() + 1);
        tokio::task::spawn_local(observer(
            ctx.clone(),
            sh.clone(),
            sem.clone(),
            spread.route(i + 1),
            login,
            sid.clone(),
            a.messages,
            a.observe,
            phase_rx.clone(),
        ));
    }
    let cutoff = ctx.cutoff();
    tokio::pin!(cutoff);
    while sh.setup_done.get() < a.observers {
        tokio::select! {
            _ = sh.notify.notified() => {}
            _ = &mut cutoff => break,
            // the publisher keeps reading (memberJoined etc.) while it waits
            ev = publ.next_ev() => {
                if let Ev::Closed(c) = ev {
                    count_close(&stats, c);
                    return finish(&ctx, &a, report_fail(&ctx, "publisher closed during setup"), &phase_tx, &sh).await;
                }
            }
        }
    }
    let observers = sh.ready.get();
    if observers == 0 {
        let r = ctx.failed(NAME, "no observer could attach".into());
        return finish(&ctx, &a, r, &phase_tx, &sh).await;
    }

    // Measured phase.
    ctx.set_phase("publish", a.messages * (observers as u64 + 1));
    let body = super::body(a.body_bytes);
    let start = procfs::sample(&ctx.common.server_pid);
    let t_run = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut replies = 0u64;
    let mut own = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stop_reason = None;
    let mut publisher_alive = true;
    let send_action = publ.action(Op::SendMessage {
        sid: &sid,
        body: &body,
        t: 0,
    });
    while replies < a.messages {
        let allowed = match a.rate {
            Some(r) => ((t_run.elapsed().as_secs_f64() * r) as u64 + 1).min(a.messages),
            None => a.messages,
        };
        let mut fed = false;
        while sent < allowed && sent - replies < a.window {
            let op = Op::SendMessage {
                sid: &sid,
                body: &body,
                t: now_ns(),
            };
            if let Err(e) = publ.send_op(op, true).await {
                stats.borrow_mut().error(e.key(publ.action(op)));
                publisher_alive = false;
                break;
            }
            sent += 1;
            fed = true;
        }
        if !publisher_alive {
            break;
        }
        stats.borrow_mut().sent = sent;
        if fed {
            if let Err(e) = publ.flush().await {
                stats.borrow_mut().error(e.key(send_action));
                break;
            }
        }
        tokio::select! {
            biased;
            _ = &mut cutoff => { stop_reason = ctx.stop_reason(); break; }
            ev = publ.next_ev() => match ev {
                Ev::Reply { error: None, .. } => {
                    replies += 1;
                    stats.borrow_mut().acked += 1;
                }
                Ev::Reply { error: Some(code), .. } => {
                    replies += 1;
                    stats.borrow_mut().error(format!("{send_action}: {code}"));
                }
                Ev::Push(Push::MessageAdded { own: true, .. }) => {
                    own += 1;
                    stats.borrow_mut().progress += 1;
                }
                Ev::Closed(c) => { count_close(&stats, c); break; }
                _ => {}
            },
            _ = tick.tick(), if a.rate.is_some() => {}
        }
    }
    // Wait for the observers to receive everything.
    let acked = stats.borrow().acked;
    if stop_reason.is_none() {
        let drain = ctx.within(Duration::from_secs(ctx.common.drain));
        let publ_ref = &mut publ;
        while sh.complete.get() < observers || own < acked {
            tokio::select! {
                _ = sh.notify.notified() => {}
                _ = tokio::time::sleep_until(drain) => break,
                ev = publ_ref.next_ev() => match ev {
                    Ev::Push(Push::MessageAdded { own: true, .. }) => {
                        own += 1;
                        stats.borrow_mut().progress += 1;
                    }
                    Ev::Closed(c) => { count_close(&stats, c); break; }
                    _ => {}
                },
            }
        }
        stop_reason = ctx.stop_reason();
    }
    let end = procfs::sample(&ctx.common.server_pid);

    let mut r = ctx.report(NAME, &stats.borrow(), &start, &end, stop_reason);
    r.param("observers", a.observers);
    r.param("messages", a.messages);
    r.param("body_bytes", a.body_bytes);
    r.param("window", a.window);
    r.param("rate", a.rate);
    r.param("observe", a.observe);
    r.expect_deliveries(acked * (observers as u64 + 1));
    r.metrics.insert("observers attached", observers as f64);
    r.metrics
        .insert("observers complete", sh.complete.get() as f64);
    if r.measured_s > 0.0 {
        r.metrics.insert(
            "messages/s (publisher)",
            (acked as f64 / r.measured_s).round(),
        );
    }
    if ctx.is_broker() {
        let cpu = r.server.as_ref().and_then(|s| s.cpu_us_per_delivery);
        r.check_max("broker CPU per delivery (budget)", cpu, 0.7, "µs");
    }
    r.check_clean();
    publ.close(Duration::from_secs(1)).await;
    finish(&ctx, &a, r, &phase_tx, &sh).await
}

fn report_fail(ctx: &Ctx, why: &str) -> Report {
    ctx.failed(NAME, why.to_string())
}

/// Tell the observers to close, and wait (bounded) for them to do so.
async fn finish(
    ctx: &Ctx,
    _a: &FanoutArgs,
    r: Report,
    phase_tx: &watch::Sender<u8>,
    sh: &Shared,
) -> Report {
    let _ = phase_tx.send(3);
    ctx.set_phase("close", 0);
    super::wait_closed(&sh.alive, &sh.notify).await;
    r
}

#[allow(clippy::too_many_arguments)]
async fn observer(
    ctx: Rc<Ctx>,
    sh: Rc<Shared>,
    sem: Rc<Semaphore>,
    route: Route,
    login: Login,
    sid: Rc<str>,
    messages: u64,
    mode: ObserveMode,
    mut phase: watch::Receiver<u8>,
) {
    let stats = ctx.stats.clone();
    let attached = async {
        let _permit = sem.acquire().await.ok()?;
        let mut s = Session::open(&ctx.cfg, route, &login, &stats).await.ok()?;
        match s.attach(&sid, mode == ObserveMode::Join).await {
            Ok(()) => Some(s),
            Err(k) => {
                stats.borrow_mut().error(k);
                None
            }
        }
    };
    let sess = tokio::select! {
        s = attached => s,
        _ = phase.wait_for(|p| *p >= 3) => None,
    };
    sh.setup_done.set(sh.setup_done.get() + 1);
    let Some(mut sess) = sess else {
        sh.alive.set(sh.alive.get() - 1);
        sh.notify.notify_one();
        return;
    };
    sh.ready.set(sh.ready.get() + 1);
    stats.borrow_mut().progress += 1;
    sh.notify.notify_one();

    let mut got = 0u64;
    let stop = phase.wait_for(|p| *p >= 3);
    tokio::pin!(stop);
    let mut closed = false;
    loop {
        tokio::select! {
            biased;
            ev = sess.next_ev() => match ev {
                Ev::Push(Push::MessageAdded { tagged: true, .. }) => {
                    got += 1;
                    stats.borrow_mut().progress += 1;
                    if got == messages {
                        sh.complete.set(sh.complete.get() + 1);
                        sh.notify.notify_one();
                    }
                }
                Ev::Closed(c) => {
                    count_close(&stats, c);
                    closed = true;
                    break;
                }
                _ => {}
            },
            _ = &mut stop => break,
        }
    }
    if !closed {
        sess.close(Duration::from_secs(2)).await;
    }
    sh.alive.set(sh.alive.get() - 1);
    sh.notify.notify_one();
}
