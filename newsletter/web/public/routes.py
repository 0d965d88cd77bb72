"""Views of the public blueprint: subscribe, confirm, unsubscribe, preferences, health.

The views are thin: they read the request, call `subscriptions`, and pick a page.
"""

from __future__ import annotations

import json
import logging
import time

from flask import (
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import refresh
from flask_wtf.csrf import CSRFError
from sqlalchemy import text

from newsletter import privacy, subscriptions
from newsletter.delivery import totals
from newsletter.extensions import client_ip, csrf, db, limiter
from newsletter.i18n import LANG_COOKIE, supported
from newsletter.subscriptions import tokens
from newsletter.subscriptions.topics import cached_topics
from newsletter.subscriptions.validation import canonical_mailbox
from newsletter.web.public import bp
from newsletter.web.public.forms import (
    ConfirmForm,
    DataForm,
    EraseForm,
    PreferencesForm,
    RequestLinkForm,
    SubscribeForm,
    filled_too_fast,
    signup_timestamp,
    topic_choices,
)

log = logging.getLogger(__name__)

EMBED_ENDPOINTS = {"public.subscribe", "public.subscribe_start"}


@bp.get("/healthz")
def healthz():
    """200 with the database's status, 503 when it cannot be reached."""
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001  (any failure means unhealthy)
        db.session.rollback()
        return jsonify(status="error", database=str(exc.__class__.__name__)), 503
    return jsonify(status="ok", database="ok")


# --- helpers ---------------------------------------------------------------------------


def _per_ip() -> str:
    return current_app.config["SIGNUP_RATE_PER_IP"]


def _per_address() -> str:
    return current_app.config["SIGNUP_RATE_PER_ADDRESS"]


def _posted_email() -> object:
    if request.is_json:
        data = request.get_json(silent=True)
        return data.get("email") if isinstance(data, dict) else None
    return request.form.get("email")


def _address_key() -> str:
    """Rate-limit key of the mailbox being signed up (lower-cased, +tag removed, so neither case
    nor plus-addressing tricks help)."""
    raw = _posted_email()
    try:
        return "address:" + canonical_mailbox(subscriptions.normalise_email(raw))
    except subscriptions.InvalidInput:
        return "address:" + str(raw or "")[:320].strip().lower()


def _locale() -> str:
    from flask_babel import get_locale

    return str(get_locale() or current_app.config["DEFAULT_LOCALE"])


def _use_language_of(subscriber) -> None:
    """Pages reached from an email speak the subscriber's language, unless the visitor chose one."""
    if subscriber is not None and not (supported(request.args.get("lang"))
                                       or supported(request.cookies.get(LANG_COOKIE))):
        g.locale = subscriber.language


def _values_with_forbidden_characters() -> list[str]:
    """Names of posted fields that hold a line break or control character."""
    bad: list[str] = []
    if request.is_json:
        data = request.get_json(silent=True)
        items = data.items() if isinstance(data, dict) else []
        for name, value in items:
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and subscriptions.has_forbidden_characters(v) for v in values):
                bad.append(str(name))
    else:
        for name, value in request.form.items(multi=True):
            if subscriptions.has_forbidden_characters(value) or subscriptions.has_forbidden_characters(name):
                bad.append(name)
    return bad


@bp.before_request
def reject_control_characters():
    """Line breaks or control characters in any posted field: 400, before anything is stored."""
    if request.method != "POST" or request.endpoint == "public.unsubscribe":
        return None  # the one-click POST must always succeed; its body is not used
    bad = _values_with_forbidden_characters()
    if not bad:
        return None
    log.info("rejected a POST to %s: forbidden characters in %s", request.path, bad[:5])
    message = _("The form contained line breaks or control characters, which are not allowed.")
    if request.is_json:
        return jsonify(ok=False, error="invalid_characters", fields=bad, message=message), 400
    return render_template("public/error.html", title=_("Something was wrong with the form"),
                           message=message, start_over=True), 400


@bp.after_request
def allow_embedding(response: Response) -> Response:
    """CORS for the embedded form, only for ALLOWED_EMBED_ORIGINS (no credentials)."""
    if request.endpoint not in EMBED_ENDPOINTS:
        return response
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if origin and origin in current_app.config["ALLOWED_EMBED_ORIGINS"]:
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Accept"
            response.headers["Access-Control-Max-Age"] = "3600"
    return response


@bp.errorhandler(429)
def too_many_requests(error):
    message = _("Too many attempts. Wait a while and try again.")
    if request.is_json:
        return jsonify(ok=False, error="rate_limited", message=message), 429
    return render_template("public/error.html", title=_("Too many attempts"), message=message), 429


@bp.errorhandler(400)
def bad_request(error):
    message = _("The request could not be understood. Nothing was changed.")
    if request.is_json:
        return jsonify(ok=False, error="invalid_json", message=message), 400
    return render_template("public/error.html", title=_("Bad request"), message=message), 400


@bp.errorhandler(413)
def too_large(error):
    message = _("What was sent is too large. Nothing was changed.")
    if request.is_json:
        return jsonify(ok=False, error="too_large", message=message), 413
    return render_template("public/error.html", title=_("Too large"), message=message), 413


@bp.errorhandler(CSRFError)
def csrf_failed(error):
    message = _("The form had expired or came from another site. Reload the page and try again.")
    return render_template("public/error.html", title=_("The form has expired"), message=message,
                           start_over=True), 400


def _token_error(exc: Exception):
    """A clear page for a bad link, with a way to start over."""
    if isinstance(exc, tokens.TokenExpired):
        return render_template("public/token_error.html", reason="expired"), 410
    if isinstance(exc, subscriptions.LinkSuperseded):
        return render_template("public/token_error.html", reason="superseded"), 410
    if isinstance(exc, subscriptions.SubscriberErased):
        return render_template("public/token_error.html", reason="erased"), 410
    return render_template("public/token_error.html", reason="invalid"), 400


# --- subscribe ---------------------------------------------------------------------------


def _subscribe_form(form: SubscribeForm | None = None) -> SubscribeForm:
    form = form or SubscribeForm()
    form.topics.choices = topic_choices(cached_topics(), _locale())
    if form.language.data is None:
        form.language.data = _locale()
    return form


def _check_inbox(address: str | None = None):
    """The one answer to every accepted signup, whatever the address's state. The page repeats
    the address as it was typed (a typo shows) and its language switch keeps the page."""
    _answer_no_sooner_than(current_app.config["SIGNUP_RESPONSE_SECONDS"])  # its time tells nothing
    message = _("Thank you! Check your inbox: if the address can be subscribed, we have sent an "
                "email with a link to confirm your subscription.")
    if request.is_json:
        return jsonify(ok=True, message=message)
    if address:
        session["signup_address"] = address
    return render_template("public/check_inbox.html", message=message, address=address,
                           lang_base=url_for("public.subscribe_sent") if address else "")


@bp.get("/subscribe/sent")
def subscribe_sent():
    """The "check your inbox" page again (after a change of language), for this browser's signup."""
    address = session.get("signup_address")
    if not address:
        return redirect(url_for("public.subscribe"))
    return _check_inbox(address)


def _answer_no_sooner_than(seconds: float) -> None:
    """A new address costs an insert and a queued email, a confirmed one nothing: without this
    floor the answer's time would tell the address's state (see bench/signups_timing.py)."""
    started = g.get("signup_started")
    if started is not None and seconds > 0:
        left = seconds - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)


def _request_meta() -> dict:
    return {"ip": client_ip(), "user_agent": request.user_agent.string or ""}


@bp.get("/")
@bp.route("/subscribe", methods=["GET", "POST", "OPTIONS"])
@csrf.exempt  # the form post is checked by hand below; JSON from an embed carries no cookie
@limiter.limit(_per_ip, methods=["POST"], scope="signup-ip")
@limiter.limit(_per_address, key_func=_address_key, methods=["POST"], scope="signup-address")
def subscribe():
    """The subscribe page, its form post, and the JSON endpoint of the embedded form."""
    if request.method == "OPTIONS":  # CORS preflight; the headers come from allow_embedding
        return Response(status=204)
    g.signup_started = time.monotonic()
    if request.method == "POST" and request.is_json:
        return _subscribe_json()
    if request.method == "POST":
        csrf.protect()
        form = _subscribe_form(SubscribeForm())
        if not form.validate():
            return render_template("public/subscribe.html", form=form, started=signup_timestamp()), 400
        if form.website.data:
            log.info("signup dropped as a bot (honeypot) from %s", client_ip())
            return _check_inbox(form.email.data)
        if filled_too_fast(form.started.data):  # autofill and a quick click, or a bot: one more step
            return render_template("public/subscribe.html", form=form,
                                   started=signup_timestamp(second_step=True), again=True)
        subscriptions.request_signup(form.email.data, topics=form.topics.data, language=form.language.data,
                                     source="form", **_request_meta())
        return _check_inbox(form.email.data)
    form = _subscribe_form()
    form.email.data = (request.args.get("email") or "")[:254] or None  # "correct it": the address again
    return render_template("public/subscribe.html", form=form, started=signup_timestamp())


@bp.get("/subscribe/start")
def subscribe_start():
    """For the embedded form: the signed 'shown at' stamp it sends back as `started`."""
    return jsonify(started=signup_timestamp())


def _subscribe_json():
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return jsonify(ok=False, error="invalid_json", message=_("Send a JSON object.")), 400
    if supported(data.get("language") if isinstance(data.get("language"), str) else None):
        g.locale = data["language"]  # answer in the language the embedding page asked for
        refresh()
    topics = data.get("topics") or []
    if isinstance(topics, str):
        topics = [topics]
    try:
        if not isinstance(topics, list):
            raise subscriptions.InvalidInput("topics", "topics must be a list")
        subscriptions.validate_signup(data.get("email"), topics=topics, language=data.get("language"),
                                      name=data.get("name") or "")
    except subscriptions.InvalidInput as exc:
        return jsonify(ok=False, error="invalid", field=exc.field, message=_field_message(exc.field)), 400
    if data.get("website"):
        log.info("embedded signup dropped as a bot (honeypot) from %s", client_ip())
        return _check_inbox()
    if filled_too_fast(data.get("started")):  # never a promise of a mail that will not come
        return jsonify(ok=False, error="too_fast", started=signup_timestamp(second_step=True),
                       message=_("That was quick! Press Subscribe once more to confirm.")), 400
    subscriptions.request_signup(data["email"], topics=topics, language=data.get("language"),
                                 name=data.get("name") or "", source="embed", **_request_meta())
    return _check_inbox()


def _field_message(field: str) -> str:
    return {
        "email": _("Enter a valid email address, like name@example.se."),
        "language": _("Choose Swedish or English."),
        "topics": _("Choose among the topics shown."),
    }.get(field, _("Check what you entered and try again."))


# --- confirm and unsubscribe ----------------------------------------------------------------


@bp.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str):
    """GET shows a button and changes nothing (link scanners); POST confirms."""
    try:
        subscriber = subscriptions.subscriber_for_confirm(token)
        _use_language_of(subscriber)
        form = ConfirmForm()
        if request.method == "POST":
            if not form.validate():
                raise CSRFError(_("The form has expired"))
            subscriber = subscriptions.confirm_subscription(token, **_request_meta())
            return render_template("public/confirmed.html", subscriber=subscriber,
                                   preferences_url=tokens.preferences_url(subscriber))
    except tokens.TokenError as exc:
        return _token_error(exc)
    if subscriber.status == "confirmed":
        return render_template("public/confirmed.html", subscriber=subscriber,
                               preferences_url=tokens.preferences_url(subscriber))
    return render_template("public/confirm.html", form=form, subscriber=subscriber)


@bp.route("/unsubscribe/<token>", methods=["GET", "POST"])
@csrf.exempt  # RFC 8058: the one-click POST comes from a mail provider, without cookie or token
def unsubscribe(token: str):
    """GET shows a button; POST (also the RFC 8058 one-click target) unsubscribes: 200, idempotent."""
    if tokens.is_test_link("unsubscribe", token):
        return render_template("public/test_link.html")
    try:
        subscriber = subscriptions.subscriber_from_token("unsubscribe", token)
    except tokens.TokenError as exc:
        return _token_error(exc)
    _use_language_of(subscriber)
    if request.method == "POST":
        if subscriber is not None:
            one_click = request.form.get("List-Unsubscribe") == "One-Click"
            if subscriber.status != "unsubscribed":  # a link of an email: its send's figure, no name
                totals.count_for_latest_send(subscriber.id, "unsubscribes")
            subscriptions.unsubscribe(subscriber, source="email" if one_click else "form", **_request_meta())
        return render_template("public/unsubscribed.html")
    if subscriber is None:  # erased: the link answers (as its one-click POST must) and says why
        return render_template("public/token_error.html", reason="erased")
    if subscriber.status == "unsubscribed":
        return render_template("public/unsubscribed.html")
    return render_template("public/unsubscribe.html", subscriber=subscriber,
                           preferences_url=tokens.preferences_url(subscriber))


# --- preferences ------------------------------------------------------------------------------


def _preferences_subscriber(token: str):
    subscriber = subscriptions.subscriber_from_token("preferences", token)
    if subscriber is None:
        raise subscriptions.SubscriberErased("no such subscriber")
    _use_language_of(subscriber)
    return subscriber


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str):
    """Topics and language; links to the data download, erasure and unsubscribe."""
    if tokens.is_test_link("preferences", token):
        return render_template("public/test_link.html")
    try:
        subscriber = _preferences_subscriber(token)
    except tokens.TokenError as exc:
        return _token_error(exc)
    form = PreferencesForm()
    form.topics.choices = topic_choices(cached_topics(), _locale())
    if request.method == "GET":
        form.topics.data = subscriptions.topic_slugs(subscriber)
        form.language.data = subscriber.language
    elif form.validate():
        subscriptions.update_preferences(subscriber, topics=form.topics.data, language=form.language.data,
                                         **_request_meta())
        g.pop("locale", None)
        flash(_("Your choices are saved."), "ok")
        return redirect(url_for("public.preferences", token=token, lang=form.language.data))
    status = 200 if request.method == "GET" else 400
    return render_template("public/preferences.html", form=form, subscriber=subscriber, token=token,
                           data_form=DataForm(), unsubscribe_url=tokens.unsubscribe_url(subscriber)), status


@bp.post("/preferences/<token>/data")
def preferences_data(token: str):
    """The person's data as a JSON download (a POST, so link scanners never fetch it)."""
    try:
        subscriber = _preferences_subscriber(token)
    except tokens.TokenError as exc:
        return _token_error(exc)
    if not DataForm().validate():
        raise CSRFError(_("The form has expired"))
    body = json.dumps(subscriptions.subscriber_data(subscriber), ensure_ascii=False, indent=2)
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": 'attachment; filename="my-newsletter-data.json"',
        "Cache-Control": "no-store"})


@bp.route("/preferences/<token>/erase", methods=["GET", "POST"])
def erase(token: str):
    """GET asks 'are you sure?'; POST erases the person and everything about them."""
    try:
        subscriber = _preferences_subscriber(token)
    except tokens.TokenError as exc:
        return _token_error(exc)
    form = EraseForm()
    if request.method == "POST" and form.validate():
        privacy.erase_person(subscriber, source="form")
        return render_template("public/erased.html")
    return render_template("public/erase.html", form=form, token=token)


@bp.route("/preferences", methods=["GET", "POST"])
@limiter.limit(_per_ip, methods=["POST"], scope="link-ip")
@limiter.limit(_per_address, key_func=_address_key, methods=["POST"], scope="link-address")
def request_preferences_link():
    """Lost your emails? Enter the address and get a fresh preferences link (no enumeration)."""
    form = RequestLinkForm()
    if request.method == "POST":
        if not form.validate():
            return render_template("public/request_link.html", form=form), 400
        subscriptions.request_preferences_link(form.email.data, **_request_meta())
        return render_template("public/check_inbox.html", message=_(
            "Check your inbox: if the address is on our list, we have sent it a link to your settings."))
    return render_template("public/request_link.html", form=form)
