//! `idle`: N sessions connected and held; the broker's RSS per connection.
//!
//! VmRSS of `--server-pid` is read before connecting and again `--settle`
//! seconds after every `Connect` has been acknowledged; the difference over
//! the sessions connected is the RSS per connection. The sessions are then
//! held (reading, so the server's pings are answered) for `--hold` seconds.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use crate::cli::{IdleArgs, IdleRole};
use crate::conn::{count_close, Ev, Login, Session};
use crate::procfs;
use crate::report::Report;
use crate::target::Route;
use crate::Ctx;

const NAME: &str = "idle";

struct Shared {
    attempted: Cell<usize>,
    connected: Cell<usize>,
    /// Sessions the server closed during the hold.
    dropped: Cell<usize>,
    alive: Cell<usize>,
    notify: Notify,
}

pub async fn run(ctx: Rc<Ctx>, a: IdleArgs) -> Report {
    let stats = ctx.stats.clone();
    let n = a.connections;
    let spread = match ctx.spread(n) {
        Ok(s) => s,
        Err(e) => return ctx.failed(NAME, e),
    };
    if a.role == IdleRole::Agent {
        // Fail before connecting anything when agents cannot log in.
        if let Err(e) = ctx.agent("check") {
            return ctx.failed(NAME, e);
        }
    }
    ctx.set_phase("connect", n as u64);
    let start = procfs::sample(&ctx.common.server_pid);
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let sh = Rc::new(Shared {
        attempted: Cell::new(0),
        connected: Cell::new(0),
        dropped: Cell::new(0),
        alive: Cell::new(0),
        notify: Notify::new(),
    });
    let sem = Rc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let t_connect = tokio::time::Instant::now();
    for i in 0..n {
        let login = match a.role {
            IdleRole::Agent => ctx
                .agent(&format!("load-{}-idle-{i}", ctx.run_id))
                .expect("checked above"),
            IdleRole::Customer => Login::Anonymous,
        };
        sh.alive.set(sh.alive.get() + 1);
        tokio::task::spawn_local(hold_one(
            ctx.clone(),
            sh.clone(),
            sem.clone(),
            spread.route(i),
            login,
            phase_rx.clone(),
        ));
    }
    let cutoff = ctx.cutoff();
    tokio::pin!(cutoff);
    let mut stop_reason = None;
    while sh.attempted.get() < n {
        tokio::select! {
            _ = sh.notify.notified() => {}
            _ = &mut cutoff => { stop_reason = ctx.stop_reason(); break; }
        }
    }
    let connect_s = t_connect.elapsed().as_secs_f64();
    let connected = sh.connected.get();
    if stop_reason.is_none() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(a.settle)) => {}
            _ = &mut cutoff => { stop_reason = ctx.stop_reason(); }
        }
    }
    let after = procfs::sample(&ctx.common.server_pid);

    // Hold.
    ctx.set_phase("hold", a.hold * 1000);
    let t_hold = tokio::time::Instant::now();
    if stop_reason.is_none() {
        let hold_end = ctx.within(Duration::from_secs(a.hold));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    stats.borrow_mut().progress = t_hold.elapsed().as_millis() as u64;
                }
                _ = tokio::time::sleep_until(hold_end) => break,
                _ = &mut cutoff => break,
            }
        }
        stop_reason = ctx.stop_reason();
    }
    let end = procfs::sample(&ctx.common.server_pid);

    let mut r = ctx.report(NAME, &stats.borrow(), &start, &after, stop_reason);
    r.param("connections", n);
    r.param("hold", a.hold);
    r.param("role", a.role);
    r.param("source_addresses", spread.source_count());
    r.metrics.insert("sessions connected", connected as f64);
    r.metrics
        .insert("sessions dropped by server", sh.dropped.get() as f64);
    r.metrics.insert(
        "connects/s",
        if connect_s > 0.0 {
            (connected as f64 / connect_s).round()
        } else {
            0.0
        },
    );
    let hold_s = end.at.duration_since(after.at).as_secs_f64();
    r.metrics
        .insert("hold seconds", (hold_s * 100.0).round() / 100.0);
    if let Some(s) = r.server.as_mut() {
        if let (Some(b), Some(a2)) = (s.rss_before_kib, s.rss_after_kib) {
            if connected > 0 {
                s.rss_per_connection_bytes =
                    Some(((a2 as f64 - b as f64) * 1024.0 / connected as f64).round());
            }
        }
        if let (Some(c0), Some(c1)) = (after.server_cpu(), end.server_cpu()) {
            r.metrics.insert(
                "server CPU s during hold",
                (c1.since(c0).total() * 100.0).round() / 100.0,
            );
        }
        if let Some(rss_end) = end.server_rss_kib() {
            r.metrics
                .insert("server RSS KiB at end of hold", rss_end as f64);
        }
    }
    if ctx.is_broker() {
        let rss = r.server.as_ref().and_then(|s| s.rss_per_connection_bytes);
        r.check_max("broker RSS per connection (budget)", rss, 4096.0, "bytes");
    }
    r.check_min("sessions connected", Some(connected as f64), n as f64, "");
    r.check_max(
        "sessions dropped by server",
        Some(sh.dropped.get() as f64),
        0.0,
        "",
    );
    r.check_clean();

    let _ = phase_tx.send(3);
    ctx.set_phase("close", 0);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while sh.alive.get() > 0 {
        tokio::select! {
            _ = sh.notify.notified() => {}
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    r
}

async fn hold_one(
    ctx: Rc<Ctx>,
    sh: Rc<Shared>,
    sem: Rc<Semaphore>,
    route: Route,
    login: Login,
    mut phase: watch::Receiver<u8>,
) {
    let stats = ctx.stats.clone();
    let open = async {
        let _permit = sem.acquire().await.ok()?;
        Session::open(&ctx.cfg, route, &login, &stats).await.ok()
    };
    let sess = tokio::select! {
        s = open => s,
        _ = phase.wait_for(|p| *p >= 3) => None,
    };
    sh.attempted.set(sh.attempted.get() + 1);
    let Some(mut sess) = sess else {
        sh.alive.set(sh.alive.get() - 1);
        sh.notify.notify_one();
        return;
    };
    sh.connected.set(sh.connected.get() + 1);
    stats.borrow_mut().progress += 1;
    sh.notify.notify_one();
    let stop = phase.wait_for(|p| *p >= 3);
    tokio::pin!(stop);
    let mut closed = false;
    loop {
        tokio::select! {
            ev = sess.next_ev() => if let Ev::Closed(c) = ev {
                count_close(&stats, c);
                sh.dropped.set(sh.dropped.get() + 1);
                closed = true;
                break;
            },
            _ = &mut stop => break,
        }
    }
    if !closed {
        sess.close(Duration::from_secs(5)).await;
    }
    sh.alive.set(sh.alive.get() - 1);
    sh.notify.notify_one();
}
