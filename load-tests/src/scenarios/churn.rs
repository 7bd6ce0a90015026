//! `churn`: engagement cycles at a rate. Each cycle connects an anonymous
//! customer, `StartEngagement`s, sends one message, `RestartEngagement`s,
//! waits for its `engagementRestarted` push and disconnects.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::cli::ChurnArgs;
use crate::conn::{count_close, Ev, Login, Push, Session};
use crate::procfs;
use crate::proto::{SendMessageP, TimeAttr};
use crate::report::Report;
use crate::stats::now_ns;
use crate::target::Route;
use crate::Ctx;

const NAME: &str = "churn";

struct Shared {
    /// Cycles in progress.
    active: Cell<usize>,
    finished: Cell<u64>,
    completed: Cell<u64>,
    messages_ok: Cell<u64>,
    notify: Notify,
}

pub async fn run(ctx: Rc<Ctx>, a: ChurnArgs) -> Report {
    let stats = ctx.stats.clone();
    let total = a.total;
    let spread = match ctx.spread(total as usize) {
        Ok(s) => s,
        Err(e) => return ctx.failed(NAME, e),
    };
    ctx.set_phase("churn", total);
    let sh = Rc::new(Shared {
        active: Cell::new(0),
        finished: Cell::new(0),
        completed: Cell::new(0),
        messages_ok: Cell::new(0),
        notify: Notify::new(),
    });
    let body: Rc<str> = super::body(a.body_bytes).into();
    let start = procfs::sample(&ctx.common.server_pid);
    let t0 = tokio::time::Instant::now();
    let cutoff = ctx.cutoff();
    tokio::pin!(cutoff);
    let mut launched = 0u64;
    let mut late = 0u64;
    let mut stop_reason = None;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while launched < total {
        let due = if a.rate > 0.0 {
            ((t0.elapsed().as_secs_f64() * a.rate) as u64 + 1).min(total)
        } else {
            total
        };
        while launched < due {
            if sh.active.get() >= a.concurrency.max(1) {
                break;
            }
            sh.active.set(sh.active.get() + 1);
            let i = launched;
            launched += 1;
            let (ctx2, sh2, body2, src) = (
                ctx.clone(),
                sh.clone(),
                body.clone(),
                spread.route(i as usize),
            );
            tokio::task::spawn_local(async move {
                cycle(&ctx2, &sh2, src, &body2).await;
                sh2.active.set(sh2.active.get() - 1);
                sh2.finished.set(sh2.finished.get() + 1);
                ctx2.stats.borrow_mut().progress += 1;
                sh2.notify.notify_one();
            });
        }
        if launched < due {
            late += 1; // all slots busy: this tick's cycles start late
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut cutoff => { stop_reason = ctx.stop_reason(); break; }
        }
    }
    let launch_s = t0.elapsed().as_secs_f64();
    while sh.finished.get() < launched {
        tokio::select! {
            _ = sh.notify.notified() => {}
            _ = &mut cutoff => { stop_reason = ctx.stop_reason(); break; }
        }
    }
    let end = procfs::sample(&ctx.common.server_pid);
    let elapsed = t0.elapsed().as_secs_f64();
    let completed = sh.completed.get();

    let mut r = ctx.report(NAME, &stats.borrow(), &start, &end, stop_reason);
    r.param("rate", a.rate);
    r.param("total", total);
    r.param("concurrency", a.concurrency);
    r.param("source_addresses", spread.source_count());
    r.expect_deliveries(sh.messages_ok.get());
    r.metrics.insert("cycles launched", launched as f64);
    r.metrics.insert("cycles completed", completed as f64);
    r.metrics
        .insert("cycles failed", (sh.finished.get() - completed) as f64);
    r.metrics
        .insert("launch ticks delayed (all slots busy)", late as f64);
    let achieved = if elapsed > 0.0 {
        completed as f64 / elapsed
    } else {
        0.0
    };
    r.metrics
        .insert("engagements started+restarted/s", achieved.round());
    r.metrics.insert(
        "launch rate/s",
        if launch_s > 0.0 {
            (launched as f64 / launch_s).round()
        } else {
            0.0
        },
    );
    if let Some(s) = r.server.as_mut() {
        // Each cycle delivers only its own echo: per cycle is the figure.
        s.clear_per_delivery();
    }
    if let Some(c) = r.server.as_ref().and_then(|s| s.cpu_s) {
        if completed > 0 {
            r.metrics.insert(
                "broker CPU µs per cycle",
                (c * 1e6 / completed as f64 * 10.0).round() / 10.0,
            );
        }
    }
    r.check_min(
        "engagements started+restarted/s (budget)",
        Some(achieved.round()),
        5000.0,
        "/s",
    );
    r.check_min("cycles completed", Some(completed as f64), total as f64, "");
    r.check_clean();
    r
}

async fn cycle(ctx: &Ctx, sh: &Shared, route: Route, body: &str) {
    let stats = &ctx.stats;
    let t0 = now_ns();
    let Ok(mut s) = Session::open(&ctx.cfg, route, &Login::Anonymous, stats).await else {
        return;
    };
    let sid = match s.call("StartEngagement", None::<()>).await {
        Ok(r) => r.channel_sid,
        Err(e) => {
            stats.borrow_mut().error(e.key("StartEngagement"));
            s.close(Duration::from_secs(1)).await;
            return;
        }
    };
    let Some(sid) = sid else {
        stats
            .borrow_mut()
            .error("StartEngagement: result without channelSid");
        s.close(Duration::from_secs(1)).await;
        return;
    };
    s.trackers.expect(&sid, Some(0));
    stats.borrow_mut().sent += 1;
    let p = SendMessageP {
        channel_sid: &sid,
        body,
        message_attributes: TimeAttr { t: now_ns() },
    };
    if let Err(e) = s.call("SendMessage", Some(p)).await {
        stats.borrow_mut().error(e.key("SendMessage"));
        s.close(Duration::from_secs(1)).await;
        return;
    }
    stats.borrow_mut().acked += 1;
    sh.messages_ok.set(sh.messages_ok.get() + 1);
    if let Err(e) = s.call("RestartEngagement", None::<()>).await {
        stats.borrow_mut().error(e.key("RestartEngagement"));
        s.close(Duration::from_secs(1)).await;
        return;
    }
    // The identity's sessions get engagementRestarted (maybe already seen).
    let want = Push::EngagementRestarted.bit();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut ok = true;
    while s.seen & want == 0 {
        match tokio::time::timeout_at(deadline, s.next_ev()).await {
            Err(_) => {
                stats
                    .borrow_mut()
                    .error("missing push: engagementRestarted");
                ok = false;
                break;
            }
            Ok(Ev::Closed(c)) => {
                count_close(stats, c);
                return;
            }
            Ok(_) => {}
        }
    }
    if s.seen & Push::EngagementStarted.bit() == 0 {
        stats.borrow_mut().error("missing push: engagementStarted");
        ok = false;
    }
    s.close(Duration::from_secs(2)).await;
    if ok {
        stats.borrow_mut().timing("cycle time", now_ns() - t0);
        sh.completed.set(sh.completed.get() + 1);
    }
}
