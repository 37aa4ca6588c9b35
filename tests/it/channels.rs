//! Channels, on both backends, through the real binary with local fakes of the providers' APIs
//! and the providers' own signatures (Twilio's `RequestValidator` from PyPI `twilio`): Meta's
//! verification handshake, good and bad signatures, an inbound message answered on its channel, a
//! retried webhook answered once, receipts on the reply, a kill -9 between the 200 and the reply,
//! WhatsApp's service window and the business's own messages, a delivery that fails for good, and
//! tenant isolation of channels, and an email answered through a real SMTP server (PyPI
//! `aiosmtpd`) in its thread.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::openai_mock::OpenAiMock;
use crate::support::providers::{FakeProviders, meta_signature, twilio_signature, whatsapp_message, whatsapp_status};
use crate::support::{TestServer, create_key, get, ok, ok_json, request, send, turn_request};

on_both_backends!(
    a_whatsapp_message_is_answered_once_on_whatsapp_with_its_receipts,
    an_sms_through_twilio_is_answered_with_twilios_own_signatures,
    a_reply_cut_off_by_kill_9_after_the_200_goes_out_after_the_restart,
    the_business_writes_within_the_service_window_or_with_a_template,
    an_email_is_answered_by_smtp_in_its_thread,
    a_burst_is_one_reply_and_a_refused_turn_sends_the_fallback_once,
    an_agent_messages_a_customer_with_send_message_once_approved,
);

const NUMBER: &str = "106540352242922";
const SECRET: &str = "meta-app-secret";

fn env<'a>(model: &'a OpenAiMock, fake: &'a FakeProviders) -> Vec<(&'a str, &'a str)> {
    vec![
        ("LLM_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", model.url.as_str()),
        ("WHATSAPP_API_BASE_URL", fake.url.as_str()),
        ("TWILIO_API_BASE_URL", fake.url.as_str()),
        ("EVENTS", "on"),
    ]
}

async fn put(s: &TestServer, path: &str, key: Option<&str>, body: Value) -> (StatusCode, Value) {
    let r = send(s, "PUT", path, key, &[], Some(body)).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn whatsapp_channel() -> Value {
    json!({"type": "whatsapp", "phoneNumberId": NUMBER, "accessToken": "EAAG-token", "appSecret": SECRET,
           "verifyToken": "verify-me"})
}

async fn post_whatsapp(s: &TestServer, body: &str, signature: Option<&str>) -> StatusCode {
    let mut r = request(s, "POST", "/channels/whatsapp/webhook").header("content-type", "application/json");
    if let Some(sig) = signature {
        r = r.header("x-hub-signature-256", sig);
    }
    r.body(body.to_string()).send().await.unwrap().status()
}

async fn messages_of(s: &TestServer, tenant: &str, user: &str) -> Vec<Value> {
    let r = ok_json(get(s, &format!("/agent/conversations/{tenant}/users/{user}")).await).await;
    r.as_array().unwrap().iter().flat_map(|session| session["messages"].as_array().unwrap().clone()).collect()
}

/// Waits until `check` holds for the user's messages (10 s at most).
async fn until_messages(
    s: &TestServer,
    tenant: &str,
    user: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..200 {
        let messages = messages_of(s, tenant, user).await;
        if check(&messages) {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {:?}", messages_of(s, tenant, user).await);
}

async fn a_whatsapp_message_is_answered_once_on_whatsapp_with_its_receipts(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let s = TestServer::start(backend, &env(&model, &fake)).await;
    let (status, view) = put(&s, "/agent/tenants/t1/channels/wa", None, whatsapp_channel()).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["accessTokenSet"], true, "{view}");
    for secret in ["accessToken", "appSecret", "verifyToken"] {
        assert!(view.get(secret).is_none(), "{secret} is write-only: {view}");
    }
    // Meta's verification handshake.
    let verify = |token: &str| {
        format!("/channels/whatsapp/webhook?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444")
    };
    let r = get(&s, &verify("verify-me")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "1158201444");
    assert_eq!(get(&s, &verify("wrong")).await.status(), StatusCode::FORBIDDEN);

    let body = whatsapp_message(NUMBER, "15551234567", "wamid.HBgL1", "text", "hello");
    assert_eq!(post_whatsapp(&s, &body, None).await, StatusCode::UNAUTHORIZED, "no signature");
    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature("other", &body))).await, StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(messages_of(&s, "t1", "whatsapp:15551234567").await.is_empty(), "a refused webhook stores nothing");

    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    let sent = fake.wait_for(1).await;
    assert_eq!(sent[0].path, format!("/v21.0/{NUMBER}/messages"));
    assert_eq!(sent[0].authorization, "Bearer EAAG-token");
    assert_eq!(sent[0].body["messaging_product"], "whatsapp");
    assert_eq!(sent[0].body["to"], "15551234567");
    assert_eq!(sent[0].body["type"], "text");
    assert!(sent[0].body["text"]["body"].as_str().unwrap().starts_with("mock reply to: hello"), "{:?}", sent[0]);
    // Meta retries the same message: answered once.
    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.sent().len(), 1, "a retried webhook is not answered again");
    assert_eq!(model.calls(), 1);

    let user = "whatsapp:15551234567";
    let listed = ok_json(get(&s, &format!("/agent/conversations/t1/users/{user}")).await).await;
    assert_eq!(listed[0]["metadata"]["contact"]["name"], "Ana", "{listed}");
    let messages = listed[0]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["metadata"]["channel"]["providerMessageId"], "wamid.HBgL1");
    let reply = &messages[1];
    let reply_id = reply["id"].as_str().unwrap();
    assert_eq!(sent[0].body["biz_opaque_callback_data"], reply_id);
    assert_eq!(reply["metadata"]["delivery"]["status"], "accepted", "{reply}");
    assert_eq!(reply["metadata"]["delivery"]["providerMessageId"], "wamid.fake-1");
    // Receipts: delivered, then a late `sent` does not take it back.
    for status in ["delivered", "sent"] {
        let receipt = whatsapp_status(NUMBER, "wamid.fake-1", status, reply_id);
        assert_eq!(post_whatsapp(&s, &receipt, Some(&meta_signature(SECRET, &receipt))).await, StatusCode::OK);
    }
    let messages = messages_of(&s, "t1", user).await;
    assert_eq!(messages[1]["metadata"]["delivery"]["status"], "delivered", "{:?}", messages[1]);
    assert!(messages[1]["metadata"]["delivery"]["deliveredAt"].is_string());

    // A message of another type: a placeholder, and a polite reply without the model.
    let image = whatsapp_message(NUMBER, "15551234567", "wamid.HBgL2", "image", "");
    assert_eq!(post_whatsapp(&s, &image, Some(&meta_signature(SECRET, &image))).await, StatusCode::OK);
    let sent = fake.wait_for(2).await;
    assert!(sent[1].body["text"]["body"].as_str().unwrap().contains("only read text"), "{:?}", sent[1]);
    let messages = until_messages(&s, "t1", user, "the placeholder", |m| m.len() == 4).await;
    assert_eq!(messages[2]["content"], "[image message]");
    assert_eq!(model.calls(), 1);

    // A number no channel has: 200 (Meta stops retrying), nothing stored, counted.
    let stray = whatsapp_message("999999", "15550009999", "wamid.X", "text", "hi");
    assert_eq!(post_whatsapp(&s, &stray, Some(&meta_signature(SECRET, &stray))).await, StatusCode::OK);
    let metrics = get(&s, "/metrics").await.text().await.unwrap();
    assert!(metrics.contains("channel_unrouted_total{type=\"whatsapp\"} 1"), "{metrics}");
    assert!(messages_of(&s, "t1", "whatsapp:15550009999").await.is_empty());
}

async fn an_sms_through_twilio_is_answered_with_twilios_own_signatures(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    // PUBLIC_BASE_URL is what Twilio signs over: here the server's own address, known once it runs,
    // so it is set to a fixed public name the test signs with too.
    let public = "https://agents.example.com";
    let mut env = env(&model, &fake);
    env.push(("PUBLIC_BASE_URL", public));
    let s = TestServer::start(backend, &env).await;
    let sid = "AC00000000000000000000000000000001";
    let channel = json!({"type": "twilio", "accountSid": sid, "authToken": "twilio-token", "from": "+15005550006"});
    assert_eq!(put(&s, "/agent/tenants/t1/channels/sms", None, channel).await.0, StatusCode::CREATED);
    let form = [
        ("MessageSid", "SM11111111111111111111111111111111"),
        ("AccountSid", sid),
        ("From", "+15551230000"),
        ("To", "+15005550006"),
        ("Body", "hello by sms"),
        ("NumMedia", "0"),
    ];
    let path = "/channels/twilio/sms/webhook";
    let post = |signature: String| {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        request(&s, "POST", path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
    };
    let bad = post(twilio_signature("another-token", &format!("{public}{path}"), &form)).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let r = post(twilio_signature("twilio-token", &format!("{public}{path}"), &form)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/xml");
    assert!(r.text().await.unwrap().contains("<Response/>"));
    let sent = fake.wait_for(1).await;
    assert_eq!(sent[0].path, format!("/2010-04-01/Accounts/{sid}/Messages.json"));
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:twilio-token"));
    assert_eq!(sent[0].authorization, format!("Basic {basic}"));
    assert_eq!(
        (sent[0].body["To"].as_str(), sent[0].body["From"].as_str()),
        (Some("+15551230000"), Some("+15005550006"))
    );
    assert!(sent[0].body["Body"].as_str().unwrap().starts_with("mock reply to: hello by sms"));
    let callback = sent[0].body["StatusCallback"].as_str().unwrap().to_string();
    assert!(callback.starts_with(&format!("{public}/channels/twilio/sms/status?messageId=")), "{callback}");
    // Twilio's retry of the same MessageSid is answered once.
    post(twilio_signature("twilio-token", &format!("{public}{path}"), &form)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.sent().len(), 1);
    // The status callback, signed over its own URL (with its query).
    let status = [
        ("MessageSid", "SM00000000000000000000000000000001"),
        ("MessageStatus", "delivered"),
        ("AccountSid", sid),
        ("From", "+15005550006"),
        ("To", "+15551230000"),
    ];
    let status_path = callback.strip_prefix(public).unwrap();
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(status).finish();
    let r = request(&s, "POST", status_path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", twilio_signature("twilio-token", &callback, &status))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let messages = messages_of(&s, "t1", "sms:+15551230000").await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["metadata"]["delivery"]["status"], "delivered", "{:?}", messages[1]);
}

async fn a_reply_cut_off_by_kill_9_after_the_200_goes_out_after_the_restart(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let env = env(&model, &fake);
    let mut first = TestServer::start_on_store(backend, None, &db, &env).await;
    assert_eq!(put(&first, "/agent/tenants/t1/channels/wa", None, whatsapp_channel()).await.0, StatusCode::CREATED);
    // The provider is down: the reply waits in the outbox when the server dies.
    fake.fail_next(&[503, 503, 503, 503, 503, 503, 503, 503]);
    let body = whatsapp_message(NUMBER, "15551234567", "wamid.HBgL9", "text", "are you there");
    assert_eq!(post_whatsapp(&first, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    // Killed between two attempts (the second comes a second after the first; the third five
    // seconds after it), so no claim of the job outlives the server.
    for _ in 0..400 {
        if fake.attempts() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(fake.attempts() >= 2, "the reply was tried");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::process::Command::new("kill").args(["-9", &first.pid().to_string()]).status().unwrap();
    first.wait(Duration::from_secs(5));
    assert!(fake.sent().is_empty());
    fake.fail_next(&[]);
    let second = TestServer::start_on_store(backend, Some(&first), &db, &env).await;
    let sent = fake.wait_for(1).await;
    assert!(sent[0].body["text"]["body"].as_str().unwrap().starts_with("mock reply to: are you there"));
    assert_eq!(model.calls(), 1, "the turn ran once; only its send was left");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.sent().len(), 1, "sent once");
    let messages = messages_of(&second, "t1", "whatsapp:15551234567").await;
    assert_eq!(messages[1]["metadata"]["delivery"]["status"], "accepted");
}

async fn the_business_writes_within_the_service_window_or_with_a_template(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let s = TestServer::start(backend, &env(&model, &fake)).await;
    let mut channel = whatsapp_channel();
    channel["templates"] = json!([{"name": "order_update", "language": "en_US"}]);
    assert_eq!(put(&s, "/agent/tenants/t1/channels/wa", None, channel).await.0, StatusCode::CREATED);
    let path = "/agent/tenants/t1/channels/wa/messages";
    // Nobody wrote yet: a text is outside the window; a template goes.
    let r = send(&s, "POST", path, None, &[], Some(json!({"to": "15557654321", "text": "your order shipped"}))).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "outside_service_window", "{e}");
    let template = json!({"to": "15557654321", "template": {"name": "order_update", "language": "en_US"}});
    let r = send(&s, "POST", path, None, &[], Some(template)).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let sent = fake.wait_for(1).await;
    assert_eq!(sent[0].body["type"], "template");
    assert_eq!(sent[0].body["template"]["name"], "order_update");
    assert_eq!(sent[0].body["template"]["language"]["code"], "en_US");
    // The customer answers: within 24 hours, the business may write text.
    let body = whatsapp_message(NUMBER, "15557654321", "wamid.A1", "text", "thanks");
    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    fake.wait_for(2).await;
    let r = send(&s, "POST", path, None, &[], Some(json!({"to": "15557654321", "text": "you're welcome"}))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let stored: Value = r.json().await.unwrap();
    assert_eq!(stored["role"], "agent");
    assert_eq!(stored["metadata"]["source"], "business");
    let sent = fake.wait_for(3).await;
    assert_eq!(sent[2].body["text"]["body"], "you're welcome");
    let messages = messages_of(&s, "t1", "whatsapp:15557654321").await;
    let contents: Vec<&str> = messages.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents.len(), 4, "{contents:?}");
    assert_eq!(contents[3], "you're welcome");

    // A send the provider refuses for good: marked on the message, and a change event.
    fake.fail_next(&[400]);
    let r = send(&s, "POST", path, None, &[], Some(json!({"to": "15557654321", "text": "one more"}))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let failed: Value = r.json().await.unwrap();
    let id = failed["id"].as_str().unwrap().to_string();
    until_messages(&s, "t1", "whatsapp:15557654321", "the failure on the message", |m| {
        m.iter().any(|x| x["id"] == id.as_str() && x["metadata"]["delivery"]["status"] == "failed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let feed = ok_json(get(&s, "/agent/events/t1?types=channel.delivery_failed").await).await;
    let events = feed.as_array().unwrap();
    assert_eq!(events.len(), 1, "{feed}");
    assert_eq!(events[0]["data"]["messageId"], id.as_str());
    assert_eq!(events[0]["data"]["channelId"], "wa");

    // Erasing the user takes their waiting jobs out of the outbox: nothing more is sent to them.
    fake.fail_next(&[503; 10]);
    let r = send(&s, "POST", path, None, &[], Some(json!({"to": "15557654321", "text": "never sent"}))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for _ in 0..200 {
        if fake.attempts() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let erased = send(&s, "DELETE", "/agent/conversations/t1/users/whatsapp:15557654321", None, &[], None).await;
    assert!(erased.status().is_success(), "{}", erased.status());
    // The provider is back: a job still in the outbox would go at its next attempt (within 6 s).
    fake.fail_next(&[]);
    tokio::time::sleep(Duration::from_millis(7000)).await;
    assert!(!fake.sent().iter().any(|x| x.body["text"]["body"] == "never sent"), "an erased user's job was sent");
}

/// An address belongs to one channel of one tenant: another tenant's claim of it is a 409 that
/// says nothing of whose it is; a tenant's key reaches only its own channels; credentials are
/// write-only and a replace keeps them.
#[tokio::test]
async fn channels_belong_to_their_tenant_and_their_addresses_to_one_channel() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = create_key(dir.path(), &["--tenant", "t1", "--name", "t1"]);
    let k2 = create_key(dir.path(), &["--tenant", "t2", "--name", "t2"]);
    let keys = dir.path().join("keys.json");
    let s = TestServer::start("sqlite", &[("AUTH_MODE", "api-key"), ("API_KEYS_FILE", keys.to_str().unwrap())]).await;
    let (status, _) = put(&s, "/agent/tenants/t1/channels/wa", Some(&k1), whatsapp_channel()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, e) = put(&s, "/agent/tenants/t2/channels/mine", Some(&k2), whatsapp_channel()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "address_taken");
    assert!(!e.to_string().contains("t1"), "reveals nothing of the owner: {e}");
    let r = send(&s, "GET", "/agent/tenants/t1/channels", Some(&k2), &[], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A replace without the credentials keeps them.
    let (status, view) =
        put(&s, "/agent/tenants/t1/channels/wa", Some(&k1), json!({"type": "whatsapp", "phoneNumberId": NUMBER})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["appSecretSet"], true);
    // A field of another kind, and a missing one, are named.
    let (status, e) =
        put(&s, "/agent/tenants/t1/channels/bad", Some(&k1), json!({"type": "twilio", "accountSid": "AC1"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["field"], "authToken", "{e}");
    // Deleted: the address is free for another tenant.
    assert_eq!(
        send(&s, "DELETE", "/agent/tenants/t1/channels/wa", Some(&k1), &[], None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(put(&s, "/agent/tenants/t2/channels/mine", Some(&k2), whatsapp_channel()).await.0, StatusCode::CREATED);
    let listed = ok_json(send(&s, "GET", "/agent/tenants/t2/channels", Some(&k2), &[], None).await).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// A real SMTP server (PyPI `aiosmtpd`) that writes what it receives to a maildir.
struct SmtpServer {
    port: u16,
    maildir: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("maildir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (./scripts/test.sh installs it)");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SmtpServer { port, maildir, child, _dir: dir }
    }

    /// The messages received, as text, waiting for `n` (20 s at most).
    async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..400 {
            let mut mails: Vec<String> = std::fs::read_dir(self.maildir.join("new"))
                .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect())
                .unwrap_or_default();
            if mails.len() >= n {
                mails.sort();
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("waited for {n} emails");
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    mail.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(": ")))
}

async fn an_email_is_answered_by_smtp_in_its_thread(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let smtp = SmtpServer::start().await;
    let s = TestServer::start(backend, &env(&model, &fake)).await;
    let secret = "s3cret-inbound-hook-0123";
    let channel = json!({"type": "email", "address": "Support@Acme.example", "host": "127.0.0.1", "port": smtp.port,
                         "tls": "none", "inboundSecret": secret});
    let (status, view) = put(&s, "/agent/tenants/t1/channels/mail", None, channel).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["inboundSecretSet"], true);
    let form = || {
        reqwest::multipart::Form::new()
            .text("from", "Ana Lima <Ana@Customer.example>")
            .text("to", "Acme Support <support@acme.example>")
            .text("subject", "Where is my order?")
            .text("text", "Order 42 has not arrived.")
            .text("Message-ID", "<m1@customer.example>")
            .text("References", "<m0@customer.example>")
    };
    let post =
        |secret: &str| request(&s, "POST", &format!("/channels/email/mail/inbound/{secret}")).multipart(form()).send();
    assert_eq!(post("wrong-secret-000000").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(post(secret).await.unwrap().status(), StatusCode::OK);
    let mails = smtp.wait_for(1).await;
    let mail = &mails[0];
    assert_eq!(header(mail, "To"), Some("ana@customer.example"), "{mail}");
    assert!(header(mail, "From").unwrap().to_lowercase().contains("support@acme.example"), "{mail}");
    assert_eq!(header(mail, "Subject"), Some("Re: Where is my order?"));
    assert_eq!(header(mail, "In-Reply-To"), Some("<m1@customer.example>"));
    assert_eq!(header(mail, "References"), Some("<m0@customer.example> <m1@customer.example>"));
    assert!(mail.contains("mock reply to: Order 42 has not arrived."), "{mail}");
    // The service retries the same email: answered once.
    assert_eq!(post(secret).await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(smtp.wait_for(1).await.len(), 1);
    let messages = messages_of(&s, "t1", "email:ana@customer.example").await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let ours = header(mail, "Message-ID").unwrap();
    assert_eq!(messages[1]["metadata"]["delivery"]["providerMessageId"], ours, "{:?}", messages[1]);
}

async fn a_burst_is_one_reply_and_a_refused_turn_sends_the_fallback_once(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let s = TestServer::start(backend, &env(&model, &fake)).await;
    let agent = json!({"systemPrompt": "You answer customers.", "default": true, "debounceMs": 500});
    assert_eq!(put(&s, "/agent/tenants/t1/agents/desk", None, agent).await.0, StatusCode::CREATED);
    let mut channel = whatsapp_channel();
    channel["agentId"] = json!("desk");
    channel["fallbackText"] = json!("We are out of credit for today; a person will answer you soon.");
    assert_eq!(put(&s, "/agent/tenants/t1/channels/wa", None, channel).await.0, StatusCode::CREATED);
    let first = whatsapp_message(NUMBER, "15559990000", "wamid.B0", "text", "good morning");
    assert_eq!(post_whatsapp(&s, &first, Some(&meta_signature(SECRET, &first))).await, StatusCode::OK);
    fake.wait_for(1).await;
    // Two messages in a burst on the conversation: one turn (the agent's debounce), one reply.
    for (id, text) in [("wamid.B1", "hi"), ("wamid.B2", "I need help with my order")] {
        let body = whatsapp_message(NUMBER, "15559990000", id, "text", text);
        assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    }
    fake.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(model.calls(), 2, "one model call for the burst");
    let sent = fake.sent();
    assert_eq!(sent.len(), 2, "one reply for the burst: {sent:?}");
    assert!(sent[1].body["text"]["body"].as_str().unwrap().contains("I need help with my order"), "{sent:?}");
    let messages = messages_of(&s, "t1", "whatsapp:15559990000").await;
    let said: Vec<&str> =
        messages.iter().filter(|m| m["role"] == "user").map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(said, ["good morning", "hi", "I need help with my order"], "in the order they were sent");
    // The month's budget is spent: the next message gets the fallback text, once.
    let budget = json!({"monthly": {"tokens": 10}});
    assert_eq!(request(&s, "PUT", "/agent/budgets/t1").json(&budget).send().await.unwrap().status(), StatusCode::OK);
    let body = whatsapp_message(NUMBER, "15559990000", "wamid.B3", "text", "hello again");
    for _ in 0..2 {
        assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
        let sent = fake.wait_for(3).await;
        assert!(sent[2].body["text"]["body"].as_str().unwrap().starts_with("We are out of credit"), "{sent:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(fake.sent().len(), 3, "the fallback went once");
    assert_eq!(model.calls(), 2, "a refused turn calls no model");
}

async fn an_agent_messages_a_customer_with_send_message_once_approved(backend: &str) {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let s = TestServer::start(backend, &env(&model, &fake)).await;
    assert_eq!(put(&s, "/agent/tenants/t1/channels/wa", None, whatsapp_channel()).await.0, StatusCode::CREATED);
    let staff = json!({"systemPrompt": "You help the staff.", "tools": {"allow": ["send_message"]}});
    assert_eq!(put(&s, "/agent/tenants/t1/agents/staff", None, staff).await.0, StatusCode::CREATED);
    // The customer wrote (the service window is open) and was answered.
    let body = whatsapp_message(NUMBER, "15557654321", "wamid.C1", "text", "is my table ready?");
    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    fake.wait_for(1).await;
    // A staff member asks the staff agent to tell them: the tool waits for approval.
    let call = json!([{"name": "send_message", "arguments": {"channelId": "wa", "to": "15557654321", "text": "Your table is ready"}}]);
    let asked = format!("tell them [tools:{call}]");
    let turn = ok(turn_request(&s, "t1", "host").json(&json!({"message": asked, "agentId": "staff"}))).await;
    let offered = model.recorded.lock().unwrap().bodies.last().unwrap()["tools"].clone();
    assert!(offered.to_string().contains("send_message"), "{offered}");
    let action = &turn["actions"][0];
    assert_eq!(action["status"], "pending_approval", "{turn}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.sent().len(), 1, "nothing sent before the approval");
    let approve = format!(
        "/agent/conversations/t1/sessions/{}/actions/{}/approve",
        turn["sessionId"].as_str().unwrap(),
        action["id"].as_str().unwrap()
    );
    let r = request(&s, "POST", &approve).json(&json!({})).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let sent = fake.wait_for(2).await;
    assert_eq!(sent[1].body["to"], "15557654321");
    assert_eq!(sent[1].body["text"]["body"], "Your table is ready");
    let messages = messages_of(&s, "t1", "whatsapp:15557654321").await;
    let last = messages.last().unwrap();
    assert_eq!(
        (last["content"].as_str(), last["metadata"]["source"].as_str()),
        (Some("Your table is ready"), Some("agent"))
    );
}

/// WhatsApp's window, lapsed: the customer's last message is 25 hours old (written into the store
/// beside the running server), so a text is refused and a template goes; once they write again,
/// text goes.
#[tokio::test]
async fn a_text_after_the_24_hour_window_needs_a_template() {
    use agent_server::store::ConversationStore as _;
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let s = TestServer::start_on_store("sqlite", None, &db, &env(&model, &fake)).await;
    assert_eq!(put(&s, "/agent/tenants/t1/channels/wa", None, whatsapp_channel()).await.0, StatusCode::CREATED);
    let store = agent_server::store::sqlite::SqliteStore::open(&db).unwrap();
    let (tenant, user) = (
        agent_server::ids::TenantId::parse("t1").unwrap(),
        agent_server::ids::UserId::parse("whatsapp:15550001234").unwrap(),
    );
    let new = agent_server::store::NewSession {
        tenant_id: tenant.clone(),
        user_id: user.clone(),
        location_id: None,
        metadata: None,
    };
    let session = store.create_session(new).await.unwrap();
    let day_ago = agent_server::timestamp::now_micros() - 25 * 3600 * 1_000_000;
    let old = agent_server::store::Message {
        id: agent_server::ids::MessageId::generate(),
        tenant_id: tenant,
        session_id: session.id.clone(),
        user_id: user,
        content: "yesterday's question".into(),
        role: agent_server::store::Role::User,
        timestamp: agent_server::timestamp::Timestamp::from_micros(day_ago),
        metadata: None,
        expires_at: None,
        counted: None,
    };
    store.import_message(old).await.unwrap();
    let path = "/agent/tenants/t1/channels/wa/messages";
    let r = send(&s, "POST", path, None, &[], Some(json!({"to": "15550001234", "text": "still there?"}))).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "outside_service_window");
    let template = json!({"to": "15550001234", "template": {"name": "follow_up", "language": "en"}});
    assert_eq!(send(&s, "POST", path, None, &[], Some(template)).await.status(), StatusCode::ACCEPTED);
    fake.wait_for(1).await;
    let body = whatsapp_message(NUMBER, "15550001234", "wamid.W1", "text", "yes, here");
    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    fake.wait_for(2).await;
    let r = send(&s, "POST", path, None, &[], Some(json!({"to": "15550001234", "text": "great"}))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// A customer's message makes the agent ask for a write (it waits for approval); once a person
/// approves it, the agent's follow-up goes to the customer on their channel.
#[tokio::test]
async fn the_follow_up_after_an_approval_goes_out_on_the_channel() {
    let (model, fake) = (OpenAiMock::start().await, FakeProviders::start().await);
    let business = axum::Router::new().fallback(|| async { axum::Json(json!({"id": "a1", "ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, business).await.unwrap() });
    let mut env = env(&model, &fake);
    env.extend([
        ("API_SERVER_URL", api.as_str()),
        ("API_RESOURCE_TYPES", "appointments"),
        ("ALLOW_PRIVATE_URLS", "true"),
    ]);
    let s = TestServer::start("sqlite", &env).await;
    assert_eq!(put(&s, "/agent/tenants/t1/channels/wa", None, whatsapp_channel()).await.0, StatusCode::CREATED);
    let write = json!([{"name": "update_resource", "arguments": {"resourceType": "appointments", "resourceId": "a1", "data": {"time": "12:00"}}}]);
    let text = format!("move my appointment [tools:{write}]");
    let body = whatsapp_message(NUMBER, "15551112222", "wamid.P1", "text", &text);
    assert_eq!(post_whatsapp(&s, &body, Some(&meta_signature(SECRET, &body))).await, StatusCode::OK);
    let sent = fake.wait_for(1).await;
    assert!(sent[0].body["text"]["body"].as_str().unwrap().contains("approve"), "{sent:?}");
    let listed = ok_json(get(&s, "/agent/conversations/t1/users/whatsapp:15551112222").await).await;
    let session = listed[0]["id"].as_str().unwrap().to_string();
    let reply = &listed[0]["messages"][1];
    let action = reply["metadata"]["actions"][0]["id"].as_str().unwrap().to_string();
    let approve = format!("/agent/conversations/t1/sessions/{session}/actions/{action}/approve");
    let r = request(&s, "POST", &approve).json(&json!({})).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let sent = fake.wait_for(2).await;
    assert_eq!(sent[1].body["to"], "15551112222", "{sent:?}");
    assert!(sent[1].body["text"]["body"].as_str().unwrap().starts_with("mock reply"), "{sent:?}");
}
