//! The registration driver: what this node announces (its process, publishers and subscribers,
//! every refresh period and at once on change) and what it learns (the remote table, and from
//! it each publisher's connections).

use super::node::{lock, Inner, Shared};
use super::publisher::PubShared;
use super::subscriber::SubShared;
use crate::config::Mode;
use crate::pb::Sample;
use crate::registration::{process_sample, topic_sample, Acceptance, Change, Direction, TopicReport, REG_SAMPLE_NAME};
use crate::wire::{SampleFrame, SampleFrameRepr};
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

impl Shared {
    pub(crate) fn acceptance_of(
        config: &crate::config::Config,
        identity: &crate::registration::Identity,
    ) -> Acceptance {
        Acceptance {
            host_name: identity.host_name.clone(),
            process_id: identity.process_id,
            network_mode: config.mode == Mode::Network,
            loopback: config.registration_loopback,
        }
    }

    pub(crate) fn pub_report(&self, p: &PubShared) -> TopicReport {
        TopicReport {
            entity_id: p.entity_id,
            topic_name: p.topic.clone(),
            datatype: p.datatype.clone(),
            active: p.sent.get() > 0,
            topic_size: p.last_size.load(Ordering::Relaxed).clamp(0, i32::MAX.into()) as i32,
            connections_local: p.connections_local.load(Ordering::Relaxed).min(i32::MAX as usize) as i32,
            connections_external: p.connections_external.load(Ordering::Relaxed).min(i32::MAX as usize) as i32,
            message_drops: 0,
            data_clock: p.clock.load(Ordering::Relaxed),
            data_frequency_mhz: {
                let now = self.epoch.elapsed().as_micros() as i64;
                let ticks = p.clock.load(Ordering::Relaxed).max(0) as u64;
                let last = p.last_tick_us.load(Ordering::Relaxed);
                lock(&p.rate).round(ticks, last, now)
            },
            latency: None,
        }
    }

    pub(crate) fn sub_report(&self, s: &SubShared) -> TopicReport {
        let st = s.stats();
        let (latency, ticks, last_send_us) = s.receive_figures();
        // Each lock on its own: no order between the subscriber's state and its rate window.
        let data_frequency_mhz = lock(&s.rate).round(ticks, last_send_us, super::node::now_us());
        TopicReport {
            entity_id: s.entity_id,
            topic_name: s.topic.clone(),
            datatype: s.datatype.clone(),
            active: st.delivered > 0,
            topic_size: s.last_size.load(Ordering::Relaxed).clamp(0, i32::MAX.into()) as i32,
            // As eCAL counts them: messages a publisher sent after the first one received here
            // that were not received (clock gaps), plus, where eCAL has nothing to compare,
            // messages dropped from this subscriber's full queue.
            message_drops: st.sequence_gaps.saturating_add(st.queue_overflow).min(i32::MAX as u64) as i32,
            // eCAL's subscriber clock counts the messages it accepted.
            data_clock: ticks.min(i64::MAX as u64) as i64,
            data_frequency_mhz,
            latency: Some(latency),
            // eCAL subscribers do not count their connections (0, 0).
            connections_local: 0,
            connections_external: 0,
        }
    }

    /// Recomputes every local publisher's connection counts from the remote table.
    pub(crate) fn update_connections(&self) {
        self.update_connections_of(None);
    }

    /// Recounts the connections of the local publishers of `topic` (all of them with `None`).
    fn update_connections_of(&self, topic: Option<&str>) {
        let remote = lock(&self.remote);
        let pubs = lock(&self.publishers);
        for p in pubs.values().filter(|p| topic.is_none_or(|t| p.topic == t)) {
            let (mut local, mut external) = (0, 0);
            for s in remote.udp_subscribers(&p.topic) {
                if s.host_name == self.identity.host_name {
                    local += 1;
                } else {
                    external += 1;
                }
            }
            let before = p.connections_local.load(Ordering::Relaxed) + p.connections_external.load(Ordering::Relaxed);
            p.connections_local.store(local, Ordering::Relaxed);
            p.connections_external.store(external, Ordering::Relaxed);
            if before != local + external {
                tracing::info!(topic = %p.topic, local, external, "publisher connections changed");
            }
        }
        // Whether any publisher here has a subscriber on this host: the data channel's
        // multicast loopback follows it (applied by the next send, not here: no call out).
        let any_local = pubs.values().any(|p| p.connections_local.load(Ordering::Relaxed) > 0);
        self.same_host_subscribers.store(any_local, Ordering::Release);
    }

    /// One reassembled registration message.
    pub(crate) fn on_registration(&self, msg: &[u8], source: SocketAddr, now: Instant) {
        let c = &self.reg_counters;
        let Ok(frame) = SampleFrame::new_checked(msg) else {
            c.bad_frame.inc();
            return;
        };
        // eCAL and this node resend every registration sample each refresh period, mostly
        // unchanged: the same bytes as last time refresh their entry without being decoded
        // (unless a tap wants every sample decoded).
        let fingerprint = {
            let mut remote = lock(&self.remote);
            let fp = remote.fingerprint(frame.body());
            if self.tap.is_none() && remote.refresh_unchanged(now, fp).is_some() {
                drop(remote);
                c.registration_unchanged.inc();
                return;
            }
            fp
        };
        let Ok(sample) = Sample::decode(frame.body()) else {
            c.bad_protobuf.inc();
            tracing::debug!("undecodable registration sample");
            return;
        };
        if let Some(tap) = &self.tap {
            super::tap::guarded(c, "registration", || tap.registration(&sample, source));
        }
        let result = {
            let mut remote = lock(&self.remote);
            let r = remote.on_sample_fingerprinted(now, &sample, &self.acceptance, Some(fingerprint));
            // A new subscriber changes the connections of the local publishers of its topic
            // only: recount those, not every publisher against the whole table.
            let (topic, unknown_process) = match r {
                Ok(Change::New(id)) => remote.entity(id).map_or((None, false), |e| {
                    (
                        (e.direction == Direction::Subscriber).then(|| e.topic_name.clone()),
                        !remote.knows_process(&e.host_name, e.process_id),
                    )
                }),
                _ => (None, false),
            };
            (r, topic, unknown_process)
        };
        match result.0 {
            // A new process (or an entity of a process not heard yet, whose process sample was
            // lost or is late) has an empty table: it learns about us now rather than at our
            // next refresh, which halves discovery time for late joiners. A new entity of a
            // known process wakes nothing: that process has our samples already, and a round
            // per new entity made a start-up burst of hundreds of processes send several rounds
            // a second each, for as long as entities kept expiring and coming back.
            Ok(Change::New(_)) | Ok(Change::NewProcess) => {
                if let Some(topic) = &result.1 {
                    self.update_connections_of(Some(topic));
                }
                let is_new_process = matches!(result.0, Ok(Change::NewProcess));
                if (is_new_process || result.2) && !self.is_own_process(&sample) {
                    self.register_now();
                }
            }
            Ok(Change::Removed(_)) => self.update_connections(),
            Ok(_) => {}
            Err(crate::registration::Rejected::BadTopicId) => c.bad_topic_id.inc(),
            Err(crate::registration::Rejected::TableFull) => {
                c.registration_table_full.inc();
                tracing::debug!("registration table full; sample ignored");
            }
            Err(crate::registration::Rejected::OverBudget) => {
                c.registration_over_budget.inc();
                tracing::debug!("registration table at its byte budget (registration.max_table_bytes); sample ignored");
            }
            Err(r) => {
                c.rejected_registration.inc();
                tracing::trace!(?r, "registration rejected");
            }
        }
    }

    /// Whether `sample` is about this process (heard back with `registration.loopback`).
    fn is_own_process(&self, sample: &Sample) -> bool {
        let (host, pid) = match (&sample.process, &sample.topic) {
            (Some(p), _) => (&p.host_name, p.process_id),
            (None, Some(t)) => (&t.host_name, t.process_id),
            (None, None) => return false,
        };
        *host == self.identity.host_name && pid == self.identity.process_id
    }

    /// Drops remote entities not heard for `registration.timeout_ms`.
    pub(crate) fn expire_remote(&self, now: Instant) {
        let gone = lock(&self.remote).expire(now, self.config.registration_timeout);
        if !gone.is_empty() {
            tracing::info!(count = gone.len(), "remote entities timed out");
            self.update_connections();
        }
    }

    pub(crate) fn register_now(&self) {
        let (m, c) = &self.wake;
        *lock(m) = true;
        c.notify_all();
    }
}

impl Inner {
    pub(crate) fn send_registration(&self, sample: &Sample) {
        let mut buf = Vec::with_capacity(512);
        SampleFrameRepr { name: REG_SAMPLE_NAME }.emit_prefix(&mut buf);
        sample.encode_raw(&mut buf);
        match self.send_message(&*self.reg, &buf) {
            Ok(()) => self.registrations_sent.inc(),
            Err(e) => tracing::warn!(error = %e, "sending registration failed"),
        }
    }

    fn registration_round(&self, unregister: bool) {
        let state = lock(&self.process_state).clone();
        self.send_registration(&process_sample(&self.identity, &state, false));
        let pubs: Vec<_> = lock(&self.publishers).values().cloned().collect();
        for p in pubs {
            let r = self.pub_report(&p);
            self.send_registration(&topic_sample(&self.identity, Direction::Publisher, &r, unregister));
        }
        let subs: Vec<_> =
            self.subscribers.read().unwrap_or_else(PoisonError::into_inner).values().flatten().cloned().collect();
        for s in subs {
            let r = self.sub_report(&s);
            self.send_registration(&topic_sample(&self.identity, Direction::Subscriber, &r, unregister));
        }
        if unregister {
            self.send_registration(&process_sample(&self.identity, &state, true));
        }
    }

    /// The `mw-reg-tx` thread: a registration round every refresh period, or sooner when woken
    /// (a new local entity, or a new remote process), but never sooner than [`min_round_gap`] after the last
    /// round: when hundreds of processes start at once, every one of them hears thousands of new
    /// entities, and one round per newcomer would flood the network with registration (each
    /// process's rounds back to back), losing the very samples discovery needs. The
    /// unregistration round at shutdown is sent at once.
    pub(crate) fn registration_tx(self: std::sync::Arc<Self>) {
        let refresh = self.config.registration_refresh;
        let gap = min_round_gap(refresh);
        loop {
            if self.closed() {
                self.registration_round(true);
                return;
            }
            self.registration_round(false);
            let last = Instant::now();
            let (m, c) = &self.wake;
            let mut woken = lock(m);
            // Until the refresh period is over or a wake comes.
            while !*woken {
                let left = refresh.saturating_sub(last.elapsed());
                if left.is_zero() {
                    break;
                }
                woken = c.wait_timeout(woken, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            // Woken early: wait out the gap (wakes meanwhile coalesce), unless shutting down.
            while !self.closed() {
                let left = gap.saturating_sub(last.elapsed());
                if left.is_zero() {
                    break;
                }
                woken = c.wait_timeout(woken, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            *woken = false;
        }
    }
}

/// The shortest time between two registration rounds that are not forced by shutdown: a quarter
/// of the refresh period (250 ms by default), so a burst of newcomers costs at most four rounds
/// per period, and a newcomer still hears of us within a quarter period.
pub(crate) fn min_round_gap(refresh: Duration) -> Duration {
    refresh / 4
}
