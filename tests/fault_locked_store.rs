//! Fault test: another process holds the database's write lock longer than the busy
//! timeout (a stuck writer). A do-not-call request made meanwhile must wait in the journal
//! and count as on the list, the real `renewal-bot sip` must answer every INVITE with 503
//! while it waits, and once the lock is gone the entry lands by itself and calls are
//! taken again (a listed caller gets 603).

mod fault_support;
mod support;

use fault_support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

const LISTED_BEFORE: &str = "+8613800000099";
const ASKED_WHILE_LOCKED: &str = "+8613800000005";
const NEW_CALLER: &str = "+8613800000006";

struct Uac {
    socket: UdpSocket,
    bot: SocketAddr,
    local: SocketAddr,
}

impl Uac {
    async fn new(bot: SocketAddr) -> Uac {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let local = socket.local_addr().expect("addr");
        Uac { socket, bot, local }
    }

    fn request(&self, method: &str, call_id: &str, from: &str, cseq: u32, to_tag: &str) -> String {
        let branch = format!("z9hG4bK{}", uuid::Uuid::new_v4().simple());
        let (ctype, body) = if method == "INVITE" {
            (
                "Content-Type: application/sdp\r\n",
                format!(
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
                    self.local.port() + 2
                ),
            )
        } else {
            ("", String::new())
        };
        format!(
            "{method} sip:bot@{bot} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{from}@127.0.0.1>;tag=t-{call_id}\r\n\
             To: <sip:bot@{bot}>{to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{from}@{local}>\r\n\
             {ctype}Content-Length: {len}\r\n\r\n{body}",
            bot = self.bot,
            local = self.local,
            len = body.len(),
        )
    }

    /// Sends an INVITE from `from`; the final status and the whole response.
    async fn invite(&self, call_id: &str, from: &str) -> (u16, String) {
        let invite = self.request("INVITE", call_id, from, 1, "");
        self.socket
            .send_to(invite.as_bytes(), self.bot)
            .await
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (len, _) = timeout(left, self.socket.recv_from(&mut buf))
                .await
                .expect("an answer to the INVITE")
                .expect("recv");
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            let status = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok());
            if let Some(status) = status.filter(|s| *s >= 200) {
                // Acknowledge a final answer, and end an answered call.
                let to_tag = text
                    .lines()
                    .find(|l| l.starts_with("To:"))
                    .and_then(|l| l.split("tag=").nth(1))
                    .map(|t| format!(";tag={}", t.trim()))
                    .unwrap_or_default();
                let ack = self.request("ACK", call_id, from, 1, &to_tag);
                let _ = self.socket.send_to(ack.as_bytes(), self.bot).await;
                if status == 200 {
                    let bye = self.request("BYE", call_id, from, 2, &to_tag);
                    let _ = self.socket.send_to(bye.as_bytes(), self.bot).await;
                }
                return (status, text);
            }
        }
    }
}

/// Defect 1 (and the SIP half of it): a do-not-call request the database could not take
/// used to be lost, and the bot kept taking calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_do_not_call_request_waits_sip_answers_503_then_lands_and_calls_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.sqlite");
    let (ok, out) = run(&["dnc", "add", LISTED_BEFORE], &db, None);
    assert!(ok, "{out}");
    let mut sip = Proc::spawn(bot_command(
        &[
            "sip",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "renewal_bot=info",
        ],
        &db,
        None,
    ));
    let log = sip.wait_for_log("answering SIP calls", Duration::from_secs(60));
    let addr: SocketAddr = log
        .lines()
        .find(|l| l.contains("answering SIP calls"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no SIP address in the log:\n{log}"));
    let uac = Uac::new(addr).await;
    let (status, answer) = uac.invite("before-lock", LISTED_BEFORE).await;
    assert_eq!(status, 603, "{answer}\n{}", sip.log());

    // A stuck writer holds the lock; an operator adds a number meanwhile.
    let blocker = sqlite(&db);
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let (ok, out) = run(&["dnc", "add", ASKED_WHILE_LOCKED], &db, None);
    assert!(!ok, "{out}");
    assert!(
        out.contains("locked by another process") && out.contains("journal"),
        "{out}"
    );
    let (status, answer) = uac.invite("while-locked", NEW_CALLER).await;
    assert_eq!(
        status,
        503,
        "a call was taken while do-not-call waits:\n{answer}\n{}",
        sip.log()
    );
    let (ok, out) = run(&["dnc", "list"], &db, None);
    assert!(ok && out.contains(ASKED_WHILE_LOCKED), "{out}");

    blocker.execute_batch("COMMIT").expect("release the lock");
    eventually("the waiting entry lands", Duration::from_secs(20), || {
        dnc_numbers(&db).contains(&ASKED_WHILE_LOCKED.to_string())
    })
    .await;
    let (status, answer) = uac.invite("after-lock-listed", ASKED_WHILE_LOCKED).await;
    assert_eq!(status, 603, "{answer}");
    let (status, answer) = uac.invite("after-lock-new", NEW_CALLER).await;
    assert_eq!(
        status,
        200,
        "calls are taken again:\n{answer}\n{}",
        sip.log()
    );
    assert_eq!(integrity_check(&db), "ok");
}
