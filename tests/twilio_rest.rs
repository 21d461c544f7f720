//! `place_call` against a fake Calls API (a real axum server on 127.0.0.1:0): the request
//! Twilio gets, the do-not-call refusal, and Twilio's error JSON turned into clear errors.

mod support;

use renewal_bot::dialer::{CallArgs, place_call};
use renewal_bot::store::Store;
use support::*;

fn args(number: &str, api_base: &str) -> CallArgs {
    CallArgs {
        number: number.into(),
        from: Some(FROM.into()),
        public_url: Some("https://bot.example.com/".into()),
        twilio_api_base: api_base.into(),
        timeout: 25,
        account_sid: Some(ACCOUNT.into()),
        auth_token: Some(TOKEN.into()),
    }
}

const CREATED: &str = r#"{"sid": "CA0123456789abcdef0123456789abcdef", "status": "queued", "to": "+8613800000000", "from": "+14155550100"}"#;

#[tokio::test]
async fn places_the_call_with_every_parameter_and_records_it() {
    let rest = FakeRest::start((201, CREATED), (200, "{}")).await;
    let store = Store::open_in_memory().unwrap();
    let call = place_call(args("+86 138-0000-0000", &rest.base), &store)
        .await
        .expect("call placed");
    assert_eq!(call.call_sid, "CA0123456789abcdef0123456789abcdef");

    let requests = rest.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json")
    );
    let expected_auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{ACCOUNT}:{TOKEN}")
        )
    );
    assert_eq!(req.authorization.as_deref(), Some(expected_auth.as_str()));
    let get = |name: &str| -> Vec<&str> {
        req.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("To"), ["+8613800000000"]);
    assert_eq!(get("From"), [FROM]);
    assert_eq!(get("Url"), ["https://bot.example.com/twiml"]);
    assert_eq!(get("StatusCallback"), ["https://bot.example.com/status"]);
    assert_eq!(
        get("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(get("Timeout"), ["25"]);
    assert_eq!(get("MachineDetection"), ["Enable"]);

    let call_id = store
        .find_call_by_sid(&call.call_sid)
        .unwrap()
        .expect("the call is recorded by its sid");
    assert_eq!(call_id, call.call_id);
    let call = store.get_call(&call_id).unwrap().unwrap();
    assert_eq!(call.transport, "twilio");
    assert_eq!(call.to_number.as_deref(), Some("+8613800000000"));
    assert!(call.outcome.is_none(), "still live");
}

#[tokio::test]
async fn refuses_a_number_on_the_do_not_call_list_without_calling_twilio() {
    let rest = FakeRest::start((201, CREATED), (200, "{}")).await;
    let store = Store::open_in_memory().unwrap();
    store
        .add_dnc("+8613800000000", "以后别联系了", None)
        .unwrap();
    let err = place_call(args("+8613800000000", &rest.base), &store)
        .await
        .expect_err("must refuse");
    let message = format!("{err:#}");
    assert!(message.contains("do-not-call"), "{message}");
    assert!(message.contains("以后别联系了"), "{message}");
    assert!(rest.requests().is_empty(), "Twilio was called anyway");
}

#[tokio::test]
async fn twilio_errors_come_back_with_code_message_and_link() {
    let store = Store::open_in_memory().unwrap();
    let unauthorized = FakeRest::start(
        (
            401,
            r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#,
        ),
        (200, "{}"),
    )
    .await;
    let err = place_call(args("+8613800000000", &unauthorized.base), &store)
        .await
        .expect_err("401");
    let message = format!("{err:#}");
    assert!(
        message.contains("20003") && message.contains("Authenticate"),
        "{message}"
    );
    assert!(
        message.contains("https://www.twilio.com/docs/errors/20003"),
        "{message}"
    );
    assert!(message.contains("401"), "{message}");

    let bad_request = FakeRest::start(
        (
            400,
            r#"{"code": 21211, "message": "The 'To' number +8613800000000 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        ),
        (200, "{}"),
    )
    .await;
    let err = place_call(args("+8613800000000", &bad_request.base), &store)
        .await
        .expect_err("400");
    let message = format!("{err:#}");
    assert!(
        message.contains("21211") && message.contains("not a valid phone number"),
        "{message}"
    );
    // Each attempt is recorded before the request; one Twilio refused stays unplaced.
    let attempts = store.recent_calls(10).unwrap();
    assert!(
        attempts
            .iter()
            .all(|c| c.call_sid.is_none() && c.dial_status.as_deref() == Some("refused")),
        "failed calls are not recorded as placed: {attempts:?}"
    );

    // A body that is not Twilio's error JSON still says what came back.
    let broken = FakeRest::start((502, "<html>bad gateway</html>"), (200, "{}")).await;
    let err = place_call(args("+8613800000000", &broken.base), &store)
        .await
        .expect_err("502");
    let message = format!("{err:#}");
    assert!(
        message.contains("502") && message.contains("bad gateway"),
        "{message}"
    );
}

#[tokio::test]
async fn missing_settings_are_named() {
    let store = Store::open_in_memory().unwrap();
    let mut a = args("+8613800000000", "http://127.0.0.1:9");
    a.from = None;
    let message = format!("{:#}", place_call(a, &store).await.unwrap_err());
    assert!(message.contains("TWILIO_FROM_NUMBER"), "{message}");
    let mut a = args("+8613800000000", "http://127.0.0.1:9");
    a.auth_token = None;
    let message = format!("{:#}", place_call(a, &store).await.unwrap_err());
    assert!(message.contains("TWILIO_AUTH_TOKEN"), "{message}");
    let message = format!(
        "{:#}",
        place_call(args("13800000000", "http://127.0.0.1:9"), &store)
            .await
            .unwrap_err()
    );
    assert!(message.contains("+8613800000000"), "{message}");
}

/// The hang-up fallback: `Status=completed`, and 404 / 20404 meaning "already ended".
#[tokio::test]
async fn status_completed_fallback_treats_20404_as_already_ended() {
    use renewal_bot::transport::twilio::rest::{Completion, TwilioRest};
    let ok = FakeRest::start(
        (201, CREATED),
        (200, r#"{"sid": "CA1", "status": "completed"}"#),
    )
    .await;
    let rest = TwilioRest::new(&ok.base, ACCOUNT, TOKEN);
    assert_eq!(
        rest.complete_call("CA1").await.unwrap(),
        Completion::Completed
    );
    let req = &ok.requests()[0];
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/CA1.json")
    );
    assert_eq!(req.form, vec![("Status".into(), "completed".into())]);

    let gone = FakeRest::start(
        (201, CREATED),
        (
            404,
            r#"{"code": 20404, "message": "The requested resource /2010-04-01/Accounts/AC/Calls/CA1.json was not found", "more_info": "https://www.twilio.com/docs/errors/20404", "status": 404}"#,
        ),
    )
    .await;
    let rest = TwilioRest::new(&gone.base, ACCOUNT, TOKEN);
    assert_eq!(
        rest.complete_call("CA1").await.unwrap(),
        Completion::AlreadyEnded
    );

    let denied = FakeRest::start(
        (201, CREATED),
        (
            401,
            r#"{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}"#,
        ),
    )
    .await;
    let rest = TwilioRest::new(&denied.base, ACCOUNT, TOKEN);
    let err = rest.complete_call("CA1").await.unwrap_err();
    assert_eq!(err.code(), Some(20003));
}
