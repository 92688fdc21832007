//! The page frame (navigation, the inline stylesheet, the live-update script), the
//! login page and the confirmation page every action passes through.

use axum::response::Html;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::auth::Operator;

/// The whole stylesheet: narrow windows get stacked blocks and scrolling tables.
const CSS: &str = r#"
:root{--g:#1a7f37;--a:#b58100;--r:#cf222e;--mut:#656d76;--line:#d0d7de}
*{box-sizing:border-box}body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1f2328}
header{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:center;padding:.5rem 1rem;background:#f6f8fa;border-bottom:1px solid var(--line)}
header a{color:inherit;text-decoration:none}header .brand{font-weight:700}
header .soon{color:var(--mut);font-style:italic}header form{margin-left:auto}
main{padding:.5rem 1rem;max-width:1200px}
h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;white-space:nowrap}
.badge{display:inline-block;min-width:4.5em;text-align:center;border-radius:1em;padding:0 .5em;color:#fff;font-weight:600}
.green{background:var(--g)}.amber{background:var(--a)}.red{background:var(--r)}
.rule{color:var(--mut);font-size:.9em}td.health{min-width:14em}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.chart{margin:0;flex:1 1 260px}
.chart svg{width:100%;height:60px;border:1px solid var(--line)}
.chart polyline{fill:none;stroke:#0969da;stroke-width:1.5;vector-effect:non-scaling-stroke}
.chart .axis{stroke:var(--line)}.chart text{font-size:9px;fill:var(--mut)}
.problems{background:#fff8c5;padding:.5rem;border:1px solid var(--a)}
.notice{background:#dafbe1;padding:.5rem;border:1px solid var(--g)}
form.inline{display:inline}input,select,button{font:inherit}
.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}
.filters label{display:flex;flex-direction:column;font-size:.9em}
pre{background:#f6f8fa;padding:.5rem;overflow-x:auto}
button.danger{color:var(--r)}
"#;

/// Applies each `live` event (a re-rendered fragment) to `#live`, unless the operator
/// is typing in it. The only script of the dashboard.
const LIVE_JS: &str = r#"(function(){var l=document.getElementById('live');if(!l||!window.EventSource)return;
var s=new EventSource('/ops/events');s.addEventListener('live',function(e){if(!l.contains(document.activeElement))l.innerHTML=e.data;});})();"#;

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) }
            style { (PreEscaped(CSS)) }
        }
    }
}

/// The CSRF field every POST form of `op`'s pages carries.
pub fn csrf(op: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(op.csrf); }
}

/// A page of the dashboard for `op`; `live`: with the live-update script.
pub fn page(title: &str, op: &Operator, live: bool, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header {
                        a.brand href="/ops/" { "souk ops" }
                        nav {
                            a href="/ops/" { "Overview" } " · "
                            a href="/ops/dlq" { "Dead letters" } " · "
                            a href="/ops/actions" { "Operator actions" } " · "
                            a href="/ops/trace" { "Follow an order" }
                        }
                        form.inline method="post" action="/ops/logout" {
                            (csrf(op))
                            span.rule { (op.sub) " " }
                            button type="submit" { "Log out" }
                        }
                    }
                    main { (body) }
                    @if live { script { (PreEscaped(LIVE_JS)) } }
                }
            }
        }
        .into_string(),
    )
}

/// A page without navigation (refusals, errors).
pub fn bare(title: &str, message: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body { main { h1 { (title) } p { (message) } p { a href="/ops/login" { "Log in" } " · " a href="/ops/" { "Overview" } } } }
            }
        }
        .into_string(),
    )
}

pub fn login(error: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("souk ops: log in"))
                body {
                    main {
                        h1 { "souk ops" }
                        @if let Some(e) = error { p.problems { (e) } }
                        form method="post" action="/ops/login" {
                            p {
                                label for="token" { "Operator token " }
                                span.rule { "(" code { "souk token --sub you --role operator" } ")" }
                            }
                            p { input #token type="password" name="token" autocomplete="off" required size="40"; }
                            p { button #login type="submit" { "Log in" } }
                        }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// The confirmation step of an action: what it will do, and a form posting `fields`
/// again to `action` with `confirmed=yes`.
pub fn confirm(
    op: &Operator,
    title: &str,
    what: Markup,
    action: &str,
    fields: &[(String, String)],
    button: &str,
    back: &str,
) -> Html<String> {
    page(
        title,
        op,
        false,
        html! {
            h2 { (title) }
            (what)
            form method="post" action=(action) {
                @for (name, value) in fields.iter().filter(|(n, _)| n != "csrf" && n != "confirmed") {
                    input type="hidden" name=(name) value=(value);
                }
                (csrf(op))
                input type="hidden" name="confirmed" value="yes";
                button #confirm type="submit" { (button) }
                " " a href=(back) { "Cancel" }
            }
        },
    )
}

/// The outcome of an action, with a way back.
pub fn done(op: &Operator, title: &str, what: Markup, back: &str) -> Html<String> {
    page(
        title,
        op,
        false,
        html! { h2 { (title) } div.notice { (what) } p { a #back href=(back) { "Back" } } },
    )
}
