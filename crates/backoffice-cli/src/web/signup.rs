//! The self-service sign-up pages (`email-signup`), HTML without
//! JavaScript:
//!
//! * `GET`, `POST /r/NAME/subscribe`: an address, the kinds, immediate
//!   alerts or a daily digest. The answer is the same page whether the
//!   address was new, waiting, active or unsubscribed; the address gets a
//!   confirmation link by email (through the outbox) that expires.
//! * `GET`, `POST /r/NAME/confirm/CODE/TOKEN`: the link. A GET only shows
//!   a button (mail scanners fetch links); the POST verifies the address.
//! * `GET`, `POST /r/NAME/alerts/CODE`: the subscriber changes the kinds,
//!   digest or immediate, or unsubscribes.
//!
//! The forms carry a token bound to a cookie and are refused from other
//! sites (`guard.rs`); sign-ups are counted per client address and per
//! repository (in memory in `serve`, in the repository under `cgi`). With
//! `email-signup` off every one of these routes answers 404. The model —
//! signed links, what a repeated sign-up changes — is in
//! `backoffice_tasks::notify::signup`. SQLite repositories only: on a
//! PostgreSQL schema the pages say so (501).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backoffice::clock;
use backoffice_tasks::notify::signup::{self, Link, SignupError};
use backoffice_tasks::notify::subscribers::{self, Changes, New, Subscriber};
use rusqlite::Connection;

use super::app::App;
use super::clients::ClientIp;
use super::guard;
use super::respond::{Failure, esc, html_type, on_repo_write, page, subscriber_failure};
use super::store::Store;

/// The SQLite connection of a repository, or the refusal for PostgreSQL.
fn sqlite(store: &Store) -> Result<&Connection, Failure> {
    match store {
        Store::File(r) => Ok(r.conn()),
        Store::Pg(_) => Err(Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            "self-service sign-up needs an SQLite repository; on PostgreSQL, subscribers are added by an administrator (backoffice subscriber add)",
        )),
    }
}

/// The sign-up settings, or a 404 when sign-up is off.
fn enabled(conn: &Connection) -> Result<signup::Settings, Failure> {
    let s = signup::Settings::load(conn);
    if s.enabled {
        Ok(s)
    } else {
        Err(Failure::new(
            StatusCode::NOT_FOUND,
            "self-service sign-up is off for this repository",
        ))
    }
}

fn key(conn: &Connection) -> Result<String, Failure> {
    signup::key(conn).map_err(|e| Failure::sqlite("reading the signing key", e))
}

fn email_url(conn: &Connection) -> String {
    backoffice::repo::config_get(conn, "email-url")
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn forbidden(why: &str) -> Failure {
    Failure::new(StatusCode::FORBIDDEN, why)
}

fn signup_failure(e: SignupError) -> Failure {
    match e {
        SignupError::Subscriber(e) => subscriber_failure(e),
        SignupError::Sqlite(e) => Failure::sqlite("the sign-up", e),
        SignupError::NoEmail(why) => {
            tracing::error!("sign-up: {why}");
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sign-up cannot send its confirmation email right now; the server log says why",
            )
        }
    }
}

fn bad_link() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "this link is not valid: it may have been mistyped, or the subscription removed",
    )
}

/// A page with a form: the CSRF cookie set if the request had none.
struct FormPage {
    nonce: String,
    fresh: bool,
    token: String,
}

impl FormPage {
    fn new(conn: &Connection, name: &str, headers: &HeaderMap) -> Result<FormPage, Failure> {
        let key = key(conn)?;
        let (nonce, fresh) = match guard::cookie_nonce(headers) {
            Some(n) => (n, false),
            None => (
                guard::new_nonce().map_err(|e| Failure::internal("making a form nonce", e))?,
                true,
            ),
        };
        let token = guard::token(&key, name, &nonce, clock::now());
        Ok(FormPage {
            nonce,
            fresh,
            token,
        })
    }

    fn reply(&self, conn: &Connection, name: &str, status: StatusCode, html: String) -> Response {
        let mut resp = (status, html_type(), html).into_response();
        if self.fresh {
            let secure = email_url(conn).starts_with("https://");
            if let Some(v) = guard::set_cookie(name, &self.nonce, secure) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        resp
    }
}

/// Refuses a POST from another site or without a valid token.
fn check_post(
    conn: &Connection,
    name: &str,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(), Failure> {
    guard::same_origin(headers, &email_url(conn)).map_err(forbidden)?;
    let key = key(conn)?;
    guard::check_token(
        &key,
        name,
        headers,
        guard::field(form, "csrf"),
        clock::now(),
    )
    .map_err(forbidden)
}

/// `GET /r/NAME/subscribe`.
pub async fn get_subscribe(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, store| {
        let conn = sqlite(store)?;
        enabled(conn)?;
        let f = FormPage::new(conn, &name, &headers)?;
        let html = subscribe_form(&name, &f.token, "", "*", false);
        Ok(f.reply(conn, &name, StatusCode::OK, html))
    })
    .await
}

/// `POST /r/NAME/subscribe`.
pub async fn post_subscribe(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    client: Option<Extension<ClientIp>>,
    body: Bytes,
) -> Response {
    let client = client.map(|Extension(c)| c).unwrap_or(ClientIp(None));
    on_repo_write(app, name.clone(), true, move |app, store| {
        let conn = sqlite(store)?;
        let settings = enabled(conn)?;
        let form = guard::form(&body);
        check_post(conn, &name, &headers, &form)?;
        let kinds = guard::field(&form, "kinds")
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .unwrap_or("*");
        let new = New {
            address: guard::field(&form, "address").unwrap_or("").trim().to_owned(),
            kinds: kinds.to_owned(),
            digest: guard::field(&form, "mode") == Some("digest"),
            ..New::default()
        };
        signup::validate(&new).map_err(subscriber_failure)?;
        let now = clock::now();
        let ip = client.label();
        let admitted = match &app.signup_rates {
            Some(t) => t.take(
                &[
                    (name.clone(), settings.per_repository),
                    (format!("{name}/{ip}"), settings.per_client),
                ],
                now,
                signup::RATE_WINDOW,
            ),
            None => signup::take_rate(
                conn,
                &[("*", settings.per_repository), (&ip, settings.per_client)],
                now,
            )
            .map_err(|e| Failure::sqlite("counting sign-ups", e))?,
        };
        if !admitted {
            tracing::warn!(repo = name, client = ip, "sign-up refused: rate limit");
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many sign-ups from this address or for this repository in the last hour; try again later",
            ));
        }
        signup::request(conn, &new, now).map_err(signup_failure)?;
        let hours = settings.link_lifetime / 3600;
        let html = page(
            "Check your email",
            None,
            &format!(
                "<h1>Check your email</h1>\n<p>A message with a link to confirm was sent to {}. \
The link works for {hours} hour{}; nothing is sent to the address until it is followed.</p>\n\
<p>If no message arrives, check the address and <a href=\"subscribe\">sign up again</a>.</p>",
                esc(&new.address),
                if hours == 1 { "" } else { "s" }
            ),
        );
        Ok((html_type(), html).into_response())
    })
    .await
}

/// The sign-up form.
fn subscribe_form(name: &str, token: &str, address: &str, kinds: &str, digest: bool) -> String {
    page(
        &format!("Subscribe to {name}"),
        None,
        &format!(
            "<h1>Subscribe to {n}</h1>\n<form method=\"post\" action=\"subscribe\">\n\
<input type=\"hidden\" name=\"csrf\" value=\"{t}\">\n\
<p><label>Email address<br><input type=\"email\" name=\"address\" required size=\"40\" value=\"{a}\"></label></p>\n\
{choices}\
<p><button type=\"submit\">Subscribe</button></p>\n</form>\n\
<p class=\"dim\">You will get an email with a link to confirm; nothing else is sent until you follow it.</p>",
            n = esc(name),
            t = esc(token),
            a = esc(address),
            choices = choices(kinds, digest),
        ),
    )
}

/// The kinds and the mode, as form fields.
fn choices(kinds: &str, digest: bool) -> String {
    let checked = |on: bool| if on { " checked" } else { "" };
    format!(
        "<p><label>Kinds of event<br><input type=\"text\" name=\"kinds\" size=\"40\" value=\"{k}\"></label><br>\
<span class=\"dim\">comma-separated, e.g. checkin,ticket; * for all</span></p>\n\
<p><label><input type=\"radio\" name=\"mode\" value=\"immediate\"{i}> an email for each alert</label><br>\
<label><input type=\"radio\" name=\"mode\" value=\"digest\"{d}> one daily digest</label></p>\n",
        k = esc(kinds),
        i = checked(!digest),
        d = checked(digest),
    )
}

/// Checks a confirmation link; its subscriber if it is good.
fn linked(conn: &Connection, code: &str, token: &str) -> Result<Subscriber, Failure> {
    let key = key(conn)?;
    match signup::check_link(&key, code, token, clock::now()) {
        Link::Valid => {}
        Link::Expired => {
            return Err(Failure::new(
                StatusCode::GONE,
                "this confirmation link has expired: sign up again for a new one",
            ));
        }
        Link::Bad => return Err(bad_link()),
    }
    subscribers::find_by_code(conn, code)
        .map_err(subscriber_failure)?
        .ok_or_else(bad_link)
}

/// `GET /r/NAME/confirm/CODE/TOKEN`: a button, since a GET changes nothing.
pub async fn get_confirm(
    State(app): State<Arc<App>>,
    Path((name, code, token)): Path<(String, String, String)>,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, store| {
        let conn = sqlite(store)?;
        enabled(conn)?;
        let s = linked(conn, &code, &token)?;
        let html = page(
            "Confirm",
            None,
            &format!(
                "<h1>Confirm your subscription</h1>\n<p>Send email from {} to {}?</p>\n\
<form method=\"post\"><button type=\"submit\" name=\"confirm\" value=\"yes\">Confirm</button></form>",
                esc(&name),
                esc(&s.address)
            ),
        );
        Ok((html_type(), html).into_response())
    })
    .await
}

/// `POST /r/NAME/confirm/CODE/TOKEN`: verifies the address.
pub async fn post_confirm(
    State(app): State<Arc<App>>,
    Path((name, code, token)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, store| {
        let conn = sqlite(store)?;
        enabled(conn)?;
        // The link's signature is the secret here; the origin is checked too.
        guard::same_origin(&headers, &email_url(conn)).map_err(forbidden)?;
        linked(conn, &code, &token)?;
        let s = signup::confirm(conn, &code)
            .map_err(signup_failure)?
            .ok_or_else(bad_link)?;
        let html = page(
            "Subscribed",
            None,
            &format!(
                "<h1>Subscribed</h1>\n<p>{} will get email from {}.</p>\n\
<p><a href=\"../../alerts/{}\">Change what you get, or unsubscribe</a> (this link is in every message too).</p>",
                esc(&s.address),
                esc(&name),
                esc(&s.code)
            ),
        );
        Ok((html_type(), html).into_response())
    })
    .await
}

fn by_code(conn: &Connection, code: &str) -> Result<Subscriber, Failure> {
    subscribers::find_by_code(conn, code)
        .map_err(subscriber_failure)?
        .ok_or_else(bad_link)
}

/// `GET /r/NAME/alerts/CODE`.
pub async fn get_alerts(
    State(app): State<Arc<App>>,
    Path((name, code)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, store| {
        let conn = sqlite(store)?;
        enabled(conn)?;
        let s = by_code(conn, &code)?;
        let f = FormPage::new(conn, &name, &headers)?;
        let html = alerts_page(&name, &s, &f.token, None);
        Ok(f.reply(conn, &name, StatusCode::OK, html))
    })
    .await
}

/// `POST /r/NAME/alerts/CODE`: `action=save` (kinds, mode) or
/// `action=unsubscribe`.
pub async fn post_alerts(
    State(app): State<Arc<App>>,
    Path((name, code)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    on_repo_write(app, name.clone(), true, move |_, store| {
        let conn = sqlite(store)?;
        enabled(conn)?;
        let form = guard::form(&body);
        check_post(conn, &name, &headers, &form)?;
        let s = by_code(conn, &code)?;
        let (s, said) = match guard::field(&form, "action") {
            Some("unsubscribe") => {
                backoffice::repo::immediate(conn, || subscribers::unsubscribe_by_code(conn, &code))
                    .map_err(subscriber_failure)?;
                (
                    by_code(conn, &code)?,
                    "Unsubscribed: no more email is sent.",
                )
            }
            Some("save") => {
                let kinds = guard::field(&form, "kinds")
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .unwrap_or("*");
                let changes = Changes {
                    kinds: Some(kinds.to_owned()),
                    digest: Some(guard::field(&form, "mode") == Some("digest")),
                    // Whoever holds the code reads this address's mail:
                    // saving choices means wanting mail again.
                    donotcall: s.verified.then_some(false),
                    ..Changes::default()
                };
                let s = backoffice::repo::immediate(conn, || {
                    subscribers::set(conn, &s.id.to_string(), &changes)
                })
                .map_err(subscriber_failure)?;
                (s, "Saved.")
            }
            _ => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "the form's action must be save or unsubscribe",
                ));
            }
        };
        let f = FormPage::new(conn, &name, &headers)?;
        let html = alerts_page(&name, &s, &f.token, Some(said));
        Ok(f.reply(conn, &name, StatusCode::OK, html))
    })
    .await
}

/// The subscriber's page.
fn alerts_page(name: &str, s: &Subscriber, token: &str, said: Option<&str>) -> String {
    let state = match (s.verified, s.donotcall) {
        (_, true) => "unsubscribed: nothing is sent (save to subscribe again)",
        (false, _) => "waiting for the address to be confirmed: nothing is sent yet",
        _ => "subscribed",
    };
    let said = said
        .map(|m| format!("<p class=\"ok\" id=\"said\">{}</p>\n", esc(m)))
        .unwrap_or_default();
    page(
        &format!("Your email from {name}"),
        None,
        &format!(
            "<h1>Your email from {n}</h1>\n{said}<table class=\"facts\">\
<tr><th>Address</th><td id=\"address\">{a}</td></tr>\
<tr><th>State</th><td id=\"state\">{st}</td></tr></table>\n\
<form method=\"post\">\n<input type=\"hidden\" name=\"csrf\" value=\"{t}\">\n{choices}\
<p><button type=\"submit\" name=\"action\" value=\"save\">Save</button> \
<button type=\"submit\" name=\"action\" value=\"unsubscribe\">Unsubscribe</button></p>\n</form>",
            n = esc(name),
            a = esc(&s.address),
            st = esc(state),
            t = esc(token),
            choices = choices(&s.kinds, s.digest),
        ),
    )
}
