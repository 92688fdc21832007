//! The order saga's state machine: states, the events that move it, the effects a move
//! has, and THE table of transitions (`transition`). Pure: no I/O, so the table reads
//! as the design and is tested as such. ARCHITECTURE.md draws the same table.

use std::{borrow::Cow, time::Duration};

use super::sweeper::MAX_ATTEMPTS;

/// Where an order's saga is. Forward: reserving → authorizing → committing →
/// capturing → fulfilling → shipped. Compensating (in reverse of what was done):
/// releasing (stock) → cancelled; unwinding (release stock, then void) → voiding →
/// cancelled; refunding (money captured after the saga stopped using it) → cancelled;
/// voiding late (an authorization that turned up after the cancel) → cancelled.
///
/// A step that moves money or owes a seller's answer — capturing, fulfilling and every
/// step that gives money back — is never given up by the sweeper ([`State::gives_up`]):
/// it is sent again, less and less often ([`State::wait_after`]), until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// ReserveStock sent; awaiting StockReserved / StockRejected.
    Reserving,
    /// AuthorizePayment sent; awaiting its PaymentResult.
    Authorizing,
    /// CommitStock sent; awaiting StockCommitted.
    Committing,
    /// SettlePayment(capture) sent; awaiting its PaymentResult.
    Capturing,
    /// Confirmed; RequestFulfilment sent to every seller; awaiting SellerShipped from each.
    Fulfilling,
    /// Every seller shipped. Final.
    Shipped,
    /// Compensating: ReleaseStock sent; awaiting StockReleased, then cancelled.
    Releasing,
    /// Compensating after payment was authorized: ReleaseStock sent, then the void.
    Unwinding,
    /// Compensating: SettlePayment(void) sent; awaiting its PaymentResult, then cancelled.
    Voiding,
    /// Every compensation done. Final.
    Cancelled,
    /// A capture turned up after the saga stopped using the payment (compensating or
    /// cancelled): SettlePayment(refund) sent; awaiting its PaymentResult, re-sent by the
    /// sweeper until it is answered. The order reads `cancelled` already.
    Refunding,
    /// An authorization turned up after the saga was cancelled: SettlePayment(void)
    /// sent, re-sent by the sweeper until it is answered. The order reads `cancelled`.
    VoidingLate,
}

impl State {
    pub const ALL: [State; 12] = [
        State::Reserving,
        State::Authorizing,
        State::Committing,
        State::Capturing,
        State::Fulfilling,
        State::Shipped,
        State::Releasing,
        State::Unwinding,
        State::Voiding,
        State::Cancelled,
        State::Refunding,
        State::VoidingLate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Reserving => "reserving",
            State::Authorizing => "authorizing",
            State::Committing => "committing",
            State::Capturing => "capturing",
            State::Fulfilling => "fulfilling",
            State::Shipped => "shipped",
            State::Releasing => "releasing",
            State::Unwinding => "unwinding",
            State::Voiding => "voiding",
            State::Cancelled => "cancelled",
            State::Refunding => "refunding",
            State::VoidingLate => "voiding_late",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// How long the saga waits for the reply to this state's command before the
    /// sweeper re-sends it (`None`: final, nothing to wait for). Payments get longer:
    /// the payments pool retries with backoff within its own budget before it answers.
    pub fn step_timeout(self) -> Option<Duration> {
        match self {
            State::Reserving | State::Committing => Some(Duration::from_secs(30)),
            State::Authorizing | State::Capturing | State::Refunding => Some(Duration::from_secs(120)),
            State::Releasing | State::Unwinding | State::Voiding | State::VoidingLate => {
                Some(Duration::from_secs(60))
            }
            // Sellers ship in days: a day without every answer re-sends the requests
            // of the sellers still awaited (a request or its answer lost with a stream
            // is otherwise never seen again).
            State::Fulfilling => Some(Duration::from_secs(24 * 3600)),
            State::Shipped | State::Cancelled => None,
        }
    }

    /// How long to wait for the reply to `attempt` (1 = the first send): the step's
    /// timeout for the attempts a saga that gives up has, then doubling, up to an hour
    /// (or the step's timeout, when longer) — a step never given up is still re-sent,
    /// but a provider down for a day is not asked every minute.
    pub fn wait_after(self, attempt: i32) -> Option<Duration> {
        let base = self.step_timeout()?;
        let doublings = (attempt - MAX_ATTEMPTS).clamp(0, 16).unsigned_abs();
        Some((base * 2u32.pow(doublings)).min(base.max(Duration::from_secs(3600))))
    }

    /// Whether the sweeper compensates this state after [`MAX_ATTEMPTS`] sends. Not
    /// when the step moves money the saga must see through — a capture of an order
    /// whose stock is sold (the payments pool holds it while its provider is down; an
    /// answer comes), a void or refund giving money back — nor while sellers are
    /// awaited: those are re-sent until answered (`souk sagas compensate` still stops a
    /// capture).
    pub fn gives_up(self) -> bool {
        matches!(
            self,
            State::Reserving | State::Authorizing | State::Committing | State::Releasing | State::Unwinding
        )
    }

    /// The commands this state waits on, sent on entering it and re-sent by the
    /// sweeper and `souk sagas retry`.
    pub fn step_effects(self) -> &'static [Effect] {
        match self {
            State::Reserving => &[Effect::Reserve],
            State::Authorizing => &[Effect::Authorize],
            State::Committing => &[Effect::Commit],
            State::Capturing => &[Effect::Capture],
            State::Fulfilling => &[Effect::RequestFulfilment],
            State::Releasing | State::Unwinding => &[Effect::Release],
            State::Voiding | State::VoidingLate => &[Effect::Void],
            State::Refunding => &[Effect::Refund],
            State::Shipped | State::Cancelled => &[],
        }
    }

    /// What the order reads in this state (`accepted` while the saga runs).
    pub fn order_status(self) -> &'static str {
        match self {
            State::Fulfilling => "confirmed",
            State::Shipped => "shipped",
            State::Cancelled | State::Refunding | State::VoidingLate => "cancelled",
            _ => "accepted",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Shipped | State::Cancelled)
    }
}

/// What happened to the saga: a reply event, the sweeper, or an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reserved,
    /// The hold was refused; the reason names the SKUs.
    Rejected(String),
    Authorized,
    AuthorizeFailed(String),
    Committed,
    /// The hold had expired or been released: nothing to sell.
    CommitRefused(String),
    Captured,
    CaptureFailed(String),
    Released,
    Voided,
    /// The provider refused the void (nothing to void: an authorization that lapsed).
    VoidFailed(String),
    /// The void was not done (the payments pool's retries ran out): sent again later.
    VoidExhausted(String),
    Refunded,
    /// The provider refused the refund: its answer for the key, the same if asked again.
    RefundFailed(String),
    /// The refund was not done (the payments pool's retries ran out): sent again later.
    RefundExhausted(String),
    /// A seller shipped; others are still awaited.
    SellerShipped(String),
    /// The last awaited seller shipped.
    AllShipped(String),
    /// The reply did not come: send the step's command again (sweeper, `souk sagas retry`).
    Resend,
    /// Stop trying and compensate (sweeper past the attempts of a state that
    /// [`State::gives_up`], `souk sagas compensate`).
    GiveUp(String),
}

/// What a transition does besides changing the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Reserve,
    Authorize,
    Commit,
    Capture,
    Release,
    Void,
    Refund,
    /// One RequestFulfilment per seller still awaited.
    RequestFulfilment,
    /// Events: OrderConfirmed, OrderCancelled, OrderShipped.
    Confirm,
    Cancel,
    Ship,
}

/// The step a fulfilment request to `seller` is logged as (one per seller, where other
/// commands log as [`Effect::step`]).
pub fn fulfil_step(seller: &str) -> String {
    format!("fulfil {seller}")
}

impl Effect {
    /// The step this command is logged as (`None` for events; per seller for
    /// [`Effect::RequestFulfilment`]: [`fulfil_step`]).
    pub fn step(self) -> Option<&'static str> {
        match self {
            Effect::Reserve => Some("reserve"),
            Effect::Authorize => Some("authorize"),
            Effect::Commit => Some("commit"),
            Effect::Capture => Some("capture"),
            Effect::Release => Some("release"),
            Effect::Void => Some("void"),
            Effect::Refund => Some("refund"),
            Effect::RequestFulfilment => Some("fulfil"),
            Effect::Confirm | Effect::Cancel | Effect::Ship => None,
        }
    }

    /// The subject of this command (`None` for events): what the sweeper asks about the
    /// pool that takes it.
    pub fn subject(self) -> Option<&'static str> {
        use souk_pipelines::subjects as s;
        match self {
            Effect::Reserve => Some(s::INVENTORY_RESERVE),
            Effect::Commit => Some(s::INVENTORY_COMMIT),
            Effect::Release => Some(s::INVENTORY_RELEASE),
            Effect::Authorize => Some(s::PAYMENTS_AUTHORIZE),
            Effect::Capture | Effect::Void | Effect::Refund => Some(s::PAYMENTS_SETTLE),
            Effect::RequestFulfilment => Some(s::FULFILMENT_REQUEST),
            Effect::Confirm | Effect::Cancel | Effect::Ship => None,
        }
    }
}

/// The outcome of an event in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Move to `next` (or stay, when equal), do `effects`; `reason` (for the buyer) is
    /// set when the saga starts compensating.
    To { next: State, effects: &'static [Effect], reason: Option<String> },
    /// Not for this state (stale, duplicated, out of order): recorded, nothing changes.
    Ignore,
}

fn to(next: State, effects: &'static [Effect]) -> Transition {
    Transition::To { next, effects, reason: None }
}

fn compensate(next: State, effects: &'static [Effect], reason: &str) -> Transition {
    Transition::To { next, effects, reason: Some(reason.to_owned()) }
}

/// THE transition table: state × event → next state + effects.
pub fn transition(state: State, event: &Event) -> Transition {
    use Effect::*;
    use Event as E;
    use State::*;
    match (state, event) {
        // forward
        (Reserving, E::Reserved) => to(Authorizing, &[Authorize]),
        (Authorizing, E::Authorized) => to(Committing, &[Commit]),
        (Committing, E::Committed) => to(Capturing, &[Capture]),
        (Capturing, E::Captured) => to(Fulfilling, &[Confirm, RequestFulfilment]),
        (Fulfilling, E::SellerShipped(_)) => to(Fulfilling, &[]),
        (Fulfilling, E::AllShipped(_)) => to(Shipped, &[Ship]),
        // a step failed: undo what was done, in reverse
        (Reserving, E::Rejected(r)) => compensate(Cancelled, &[Cancel], r),
        (Authorizing, E::AuthorizeFailed(r)) => compensate(Releasing, &[Release], r),
        (Committing, E::CommitRefused(r)) => compensate(Voiding, &[Void], r),
        (Capturing, E::CaptureFailed(r)) => compensate(Unwinding, &[Release], r),
        (Releasing, E::Released) => to(Cancelled, &[Cancel]),
        (Unwinding, E::Released) => to(Voiding, &[Void]),
        // a void the provider refuses leaves an authorization that lapses on its own
        (Voiding, E::Voided | E::VoidFailed(_)) => to(Cancelled, &[Cancel]),
        (VoidingLate, E::Voided | E::VoidFailed(_)) => to(Cancelled, &[]),
        (Refunding, E::Refunded) => to(Cancelled, &[]),
        // a void or refund not done is sent again at the deadline (the sweeper), not at
        // once: the payments pool has just spent its retries
        (Voiding | VoidingLate, E::VoidExhausted(_)) | (Refunding, E::RefundExhausted(_)) => {
            Transition::Ignore
        }
        // a refund the provider refuses is refused again if re-sent (its key's answer):
        // the saga ends, the step log and `souk_saga_refunds_refused_total` say so
        (Refunding, E::RefundFailed(_)) => to(Cancelled, &[]),
        // no reply in time: send the step's command again (every handler is idempotent)
        (s, E::Resend) if !s.is_final() => {
            Transition::To { next: s, effects: s.step_effects(), reason: None }
        }
        // given up: compensate whatever may have happened (a void or release of
        // nothing is answered harmlessly)
        (Reserving, E::GiveUp(r)) => compensate(Releasing, &[Release], r),
        (Authorizing | Committing | Capturing, E::GiveUp(r)) => compensate(Unwinding, &[Release], r),
        // the release never answered: the void does not wait on it (a release answered
        // later is ignored; the authorization would otherwise stay held)
        (Unwinding, E::GiveUp(r)) => compensate(Voiding, &[Void], r),
        // a release never answered: the hold expires on its own
        (Releasing, E::GiveUp(r)) => compensate(Cancelled, &[Cancel], r),
        // voids and refunds are not given up (`State::gives_up`): money stays with the
        // buyer's provider until they are answered
        // money that moved after the saga stopped using it is given back (a void sent
        // while no authorization was recorded was refused, and spent nothing)
        (Voiding | VoidingLate, E::Authorized) => to(state, &[Void]),
        // releasing does not wait for a void: it unwinds instead (release, then a void
        // it waits for and sends again until answered) — a void sent from releasing was
        // lost if its retries ran out, the saga cancelled meanwhile (review, eleventh
        // session)
        (Releasing, E::Authorized) => to(Unwinding, &[]),
        (Cancelled, E::Authorized) => to(VoidingLate, &[Void]),
        (Releasing | Unwinding | Voiding, E::Captured) => to(Refunding, &[Refund, Cancel]),
        (Cancelled | VoidingLate, E::Captured) => to(Refunding, &[Refund]),
        _ => Transition::Ignore,
    }
}

/// The buyer's reason for a payment that failed at `step`: a decline with the
/// provider's words for it (`detail`); otherwise only that no provider answered — the
/// errors of a call (provider names, URLs, status codes) are the operators' to read,
/// in the step log (found in review: the buyer's order showed them).
pub fn payment_reason(step: &str, declined: bool, detail: &str) -> String {
    match (step, declined) {
        (_, true) => format!("payment declined: {detail}"),
        ("capture", false) => "payment could not be captured: the payment provider did not answer".into(),
        _ => "payment could not be processed: the payment provider did not answer".into(),
    }
}

/// The buyer's reason for a saga that stopped waiting in `state`.
pub fn timed_out_reason(state: State) -> Cow<'static, str> {
    Cow::Owned(format!("timed out while {}", state.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_runs_every_step_in_order() {
        let mut s = State::Reserving;
        for (event, next) in [
            (Event::Reserved, State::Authorizing),
            (Event::Authorized, State::Committing),
            (Event::Committed, State::Capturing),
            (Event::Captured, State::Fulfilling),
            (Event::SellerShipped("s1".into()), State::Fulfilling),
            (Event::AllShipped("s2".into()), State::Shipped),
        ] {
            match transition(s, &event) {
                Transition::To { next: n, .. } => assert_eq!(n, next, "{s:?} + {event:?}"),
                Transition::Ignore => panic!("{s:?} ignores {event:?}"),
            }
            s = next;
        }
    }

    #[test]
    fn final_states_ignore_everything_but_money_that_moved() {
        for event in [Event::Reserved, Event::Resend, Event::GiveUp("x".into()), Event::Released] {
            assert_eq!(transition(State::Cancelled, &event), Transition::Ignore, "{event:?}");
            assert_eq!(transition(State::Shipped, &event), Transition::Ignore, "{event:?}");
        }
        assert_eq!(
            transition(State::Cancelled, &Event::Authorized),
            Transition::To { next: State::VoidingLate, effects: &[Effect::Void], reason: None }
        );
        assert_eq!(
            transition(State::Cancelled, &Event::Captured),
            Transition::To { next: State::Refunding, effects: &[Effect::Refund], reason: None }
        );
        assert_eq!(transition(State::Shipped, &Event::Captured), Transition::Ignore, "a confirmed capture");
    }

    /// Found in review: each of these left a cancelled order holding the buyer's money.
    #[test]
    fn money_that_moved_late_is_given_back_whatever_the_compensation_is_doing() {
        let to = |next, effects: &'static [Effect]| Transition::To { next, effects, reason: None };
        // A void refused (no authorization yet) while the authorize was held: the
        // authorization that then arrives is voided, in voiding as in cancelled.
        assert_eq!(transition(State::Voiding, &Event::Authorized), to(State::Voiding, &[Effect::Void]));
        // One that arrives while the stock is being released is voided after the
        // release, by a state that waits for the void (releasing would end cancelled
        // on the release, and a void out of retries was then never sent again).
        assert_eq!(transition(State::Releasing, &Event::Authorized), to(State::Unwinding, &[]));
        assert_eq!(transition(State::Unwinding, &Event::Released), to(State::Voiding, &[Effect::Void]));
        assert_eq!(transition(State::Voiding, &Event::VoidExhausted("x".into())), Transition::Ignore);
        assert!(State::Voiding.step_timeout().is_some(), "the sweeper sends the void again");
        // A capture that turns up while compensating is refunded, and the refund is a
        // step of its own: re-sent by the sweeper until it is answered.
        for s in [State::Releasing, State::Unwinding, State::Voiding] {
            assert_eq!(
                transition(s, &Event::Captured),
                to(State::Refunding, &[Effect::Refund, Effect::Cancel]),
                "{s:?}"
            );
        }
        assert_eq!(State::Refunding.step_effects(), &[Effect::Refund]);
        assert!(State::Refunding.step_timeout().is_some() && !State::Refunding.is_final());
        assert_eq!(State::Refunding.order_status(), "cancelled");
        assert_eq!(transition(State::Refunding, &Event::RefundExhausted("x".into())), Transition::Ignore);
        // Found in review: a declined refund (the key's answer, the same at every
        // re-send) kept the saga re-sending it for ever.
        assert_eq!(transition(State::Refunding, &Event::RefundFailed("x".into())), to(State::Cancelled, &[]));
        assert_eq!(transition(State::Refunding, &Event::Refunded), to(State::Cancelled, &[]));
        // The release never answered: the void is sent anyway.
        assert_eq!(
            transition(State::Unwinding, &Event::GiveUp("t".into())),
            Transition::To { next: State::Voiding, effects: &[Effect::Void], reason: Some("t".into()) }
        );
    }

    /// Found in review: a void out of retries ended the saga with the authorization
    /// held; a refund or capture given up kept the buyer's money; a confirmed order whose
    /// fulfilment request or answer was lost stayed `confirmed` with no deadline.
    #[test]
    fn money_steps_and_awaited_sellers_are_never_given_up_only_sent_again() {
        for s in [State::Capturing, State::Fulfilling, State::Voiding, State::VoidingLate, State::Refunding] {
            assert!(!s.gives_up() && s.step_timeout().is_some(), "{s:?}");
        }
        for s in [State::Reserving, State::Authorizing, State::Committing, State::Releasing, State::Unwinding]
        {
            assert!(s.gives_up(), "{s:?}");
        }
        let exhausted = Event::VoidExhausted("timeout".into());
        assert_eq!(transition(State::Voiding, &exhausted), Transition::Ignore, "it waits for the re-send");
        assert_eq!(transition(State::VoidingLate, &exhausted), Transition::Ignore);
        let to = |next, effects: &'static [Effect]| Transition::To { next, effects, reason: None };
        assert_eq!(
            transition(State::Voiding, &Event::VoidFailed("lapsed".into())),
            to(State::Cancelled, &[Effect::Cancel])
        );
        assert_eq!(transition(State::VoidingLate, &Event::Voided), to(State::Cancelled, &[]));
        assert_eq!(transition(State::VoidingLate, &Event::Resend), to(State::VoidingLate, &[Effect::Void]));
        assert_eq!(transition(State::VoidingLate, &Event::Captured), to(State::Refunding, &[Effect::Refund]));
        assert_eq!(State::VoidingLate.order_status(), "cancelled", "the buyer's order stays cancelled");
        assert_eq!(
            transition(State::Fulfilling, &Event::Resend),
            to(State::Fulfilling, &[Effect::RequestFulfilment])
        );
        // Re-sent less often after the attempts a step that gives up would have had.
        let minute = Duration::from_secs(60);
        assert_eq!(State::Voiding.wait_after(1), Some(minute));
        assert_eq!(State::Voiding.wait_after(MAX_ATTEMPTS), Some(minute));
        assert_eq!(State::Voiding.wait_after(MAX_ATTEMPTS + 2), Some(4 * minute));
        assert_eq!(State::Voiding.wait_after(1000), Some(60 * minute), "at most an hour");
        assert_eq!(State::Fulfilling.wait_after(1000), State::Fulfilling.step_timeout(), "or the step's own");
        assert_eq!(State::Cancelled.wait_after(1), None);
    }

    #[test]
    fn replies_for_another_step_are_ignored() {
        assert_eq!(transition(State::Reserving, &Event::Captured), Transition::Ignore);
        assert_eq!(transition(State::Capturing, &Event::Reserved), Transition::Ignore);
        assert_eq!(transition(State::Authorizing, &Event::Released), Transition::Ignore, "a hold expiring");
    }

    #[test]
    fn every_state_round_trips_through_its_name() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("nope"), None);
    }
}
