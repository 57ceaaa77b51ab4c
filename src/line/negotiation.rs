//! The decoder's answers to telnet option negotiation (SPEC §2), sans-IO:
//! it is told what the client sent and says which three bytes go back.
//!
//! The server supports two options. BINARY (0), because a telnet client
//! that does not send in binary mode turns bytes inside UTF-8 characters
//! into its own commands: `DO BINARY` is offered as soon as the client shows
//! it speaks telnet, never to a plain `nc`, whose user would see the bytes.
//! Our own side (`WILL BINARY`) is granted when a client asks for it but not
//! offered: the Debian client prints UTF-8 intact without it, and with it
//! switches its terminal's output processing off, so the echo of Enter
//! becomes a bare LF and every line after one the user typed starts where
//! the typing ended. And
//! TIMING-MARK (6), because after Ctrl-C telnet discards all output until its
//! `DO TIMING-MARK` is answered, every time. Anything else is refused once
//! per option: a client waiting for an answer gets one, and a client asking
//! in a loop cannot make us write in a loop.

use super::{DO, DONT, IAC, WILL, WONT};

const BINARY: u8 = 0;
const TIMING_MARK: u8 = 6;

/// One side of BINARY: ours (we send binary, `WILL`) or the client's
/// (it sends binary, `DO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Never offered, never asked for.
    Off,
    /// We offered and wait for the client's answer.
    Offered,
    On,
    /// The client refused or turned it off.
    Refused,
}

impl Side {
    /// The client agrees, or asks for it on its own. Answering only when
    /// the state changes, and never to the answer to our own offer, is what
    /// keeps two polite peers from acknowledging each other forever.
    fn enable(&mut self) -> bool {
        let was = std::mem::replace(self, Side::On);
        matches!(was, Side::Off | Side::Refused)
    }

    /// The client refuses or turns it off; only turning off an active option
    /// needs an acknowledgement.
    fn disable(&mut self) -> bool {
        let was = std::mem::replace(self, Side::Refused);
        was == Side::On
    }
}

/// Replies decided at a moment when another event was being returned; held
/// as bits so the decoder stays small.
const PENDING_DO_BINARY: u8 = 1;

#[derive(Debug)]
pub(super) struct Negotiation {
    /// Options refused so far, one bit per option byte. Boxed on the first
    /// refusal: most clients (nc, and telnet on a port other than 23)
    /// never offer an option, and every idle connection carries this.
    refused: Option<Box<Refused>>,
    ours: Side,
    theirs: Side,
    pending: u8,
}

impl Negotiation {
    pub(super) fn new() -> Self {
        Negotiation {
            refused: None,
            ours: Side::Off,
            theirs: Side::Off,
            pending: 0,
        }
    }

    /// The client sent an IAC or ended a line the telnet way (CR LF, CR
    /// NUL): from now on it can take negotiation bytes without its user
    /// seeing them, so it is asked, once, to send in BINARY mode.
    pub(super) fn client_speaks_telnet(&mut self) {
        if self.theirs == Side::Off {
            self.theirs = Side::Offered;
            self.pending |= PENDING_DO_BINARY;
        }
    }

    /// True while an offer waits to be handed out by [`Self::take_pending`].
    pub(super) fn has_pending(&self) -> bool {
        self.pending != 0
    }

    pub(super) fn take_pending(&mut self) -> Option<[u8; 3]> {
        if self.pending & PENDING_DO_BINARY != 0 {
            self.pending &= !PENDING_DO_BINARY;
            return Some([IAC, DO, BINARY]);
        }
        None
    }

    /// The answer to `IAC command option` from the client, if one is due.
    pub(super) fn answer(&mut self, command: u8, option: u8) -> Option<[u8; 3]> {
        let reply = match (command, option) {
            (DO, TIMING_MARK) => Some(WILL),
            (DO, BINARY) => self.ours.enable().then_some(WILL),
            (DONT, BINARY) => self.ours.disable().then_some(WONT),
            (WILL, BINARY) => self.theirs.enable().then_some(DO),
            (WONT, BINARY) => self.theirs.disable().then_some(DONT),
            (DO, _) => refuse_once(&mut self.refused().asked_us, option).then_some(WONT),
            (WILL, _) => refuse_once(&mut self.refused().offered, option).then_some(DONT),
            // WONT and DONT of options we never have on need no answer.
            _ => None,
        };
        reply.map(|reply| [IAC, reply, option])
    }

    fn refused(&mut self) -> &mut Refused {
        self.refused.get_or_insert_default()
    }
}

/// The options refused once already, per direction.
#[derive(Debug, Default)]
struct Refused {
    /// Options the client asked us to use (its DO).
    asked_us: [u64; 4],
    /// Options the client offered to use (its WILL).
    offered: [u64; 4],
}

/// Marks `option` refused; true if it was not refused before.
fn refuse_once(refused: &mut [u64; 4], option: u8) -> bool {
    let word = &mut refused[usize::from(option >> 6)];
    let bit = 1u64 << (option & 63);
    let first = *word & bit == 0;
    *word |= bit;
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(negotiation: &mut Negotiation, requests: &[(u8, u8)]) -> Vec<[u8; 3]> {
        requests
            .iter()
            .filter_map(|&(command, option)| negotiation.answer(command, option))
            .collect()
    }

    fn drain(negotiation: &mut Negotiation) -> Vec<[u8; 3]> {
        std::iter::from_fn(|| negotiation.take_pending()).collect()
    }

    const NONE: Vec<[u8; 3]> = Vec::new();

    #[test]
    fn nothing_is_offered_until_the_client_speaks_telnet() {
        let mut negotiation = Negotiation::new();
        assert!(!negotiation.has_pending());
        assert_eq!(drain(&mut negotiation), NONE);
    }

    #[test]
    fn the_client_is_asked_once_to_send_binary() {
        let mut negotiation = Negotiation::new();
        negotiation.client_speaks_telnet();
        assert!(negotiation.has_pending());
        assert_eq!(drain(&mut negotiation), vec![[IAC, DO, BINARY]]);
        negotiation.client_speaks_telnet();
        assert_eq!(drain(&mut negotiation), NONE);
    }

    #[test]
    fn the_clients_agreement_is_not_answered() {
        let mut negotiation = Negotiation::new();
        negotiation.client_speaks_telnet();
        drain(&mut negotiation);
        let requests = [(WILL, BINARY), (WILL, BINARY)];
        assert_eq!(answers(&mut negotiation, &requests), NONE);
    }

    #[test]
    fn a_clients_request_for_our_binary_is_granted_once() {
        let mut negotiation = Negotiation::new();
        negotiation.client_speaks_telnet();
        drain(&mut negotiation);
        let requests = [(DO, BINARY), (DO, BINARY)];
        assert_eq!(
            answers(&mut negotiation, &requests),
            vec![[IAC, WILL, BINARY]]
        );
    }

    #[test]
    fn the_clients_refusal_of_an_offer_is_not_answered() {
        let mut negotiation = Negotiation::new();
        negotiation.client_speaks_telnet();
        drain(&mut negotiation);
        let requests = [(WONT, BINARY), (WONT, BINARY), (DONT, BINARY)];
        assert_eq!(answers(&mut negotiation, &requests), NONE);
    }

    #[test]
    fn binary_turned_off_and_on_again_is_acknowledged_each_time_it_changes() {
        let mut negotiation = Negotiation::new();
        negotiation.client_speaks_telnet();
        drain(&mut negotiation);
        let requests = [
            (DO, BINARY),
            (DONT, BINARY),
            (DONT, BINARY),
            (DO, BINARY),
            (WILL, BINARY),
            (WONT, BINARY),
            (WILL, BINARY),
        ];
        assert_eq!(
            answers(&mut negotiation, &requests),
            vec![
                [IAC, WILL, BINARY],
                [IAC, WONT, BINARY],
                [IAC, WILL, BINARY],
                [IAC, DONT, BINARY],
                [IAC, DO, BINARY],
            ]
        );
    }

    #[test]
    fn a_client_offering_binary_first_gets_the_request_as_its_answer() {
        // The IAC of its offer is what shows it speaks telnet.
        let mut negotiation = Negotiation::new();
        negotiation.client_speaks_telnet();
        assert_eq!(answers(&mut negotiation, &[(WILL, BINARY)]), NONE);
        assert_eq!(drain(&mut negotiation), vec![[IAC, DO, BINARY]]);
    }

    #[test]
    fn timing_mark_is_answered_every_time() {
        let mut negotiation = Negotiation::new();
        let requests = [(DO, TIMING_MARK); 3];
        assert_eq!(
            answers(&mut negotiation, &requests),
            vec![[IAC, WILL, TIMING_MARK]; 3]
        );
    }

    #[test]
    fn other_options_are_refused_once() {
        let mut negotiation = Negotiation::new();
        let requests = [(DO, 1), (DO, 1), (WILL, 1), (WILL, 1), (WILL, TIMING_MARK)];
        assert_eq!(
            answers(&mut negotiation, &requests),
            vec![[IAC, WONT, 1], [IAC, DONT, 1], [IAC, DONT, TIMING_MARK]]
        );
        assert_eq!(answers(&mut negotiation, &[(WILL, TIMING_MARK)]), NONE);
    }

    #[test]
    fn wont_and_dont_of_other_options_need_no_answer() {
        let mut negotiation = Negotiation::new();
        assert_eq!(
            answers(
                &mut negotiation,
                &[(WONT, 1), (DONT, 1), (DONT, TIMING_MARK)]
            ),
            NONE
        );
    }
}
