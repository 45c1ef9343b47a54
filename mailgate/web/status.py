"""The public status page: components, open incidents, history, and the Atom feed."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from xml.etree import ElementTree

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailgate.web.pages import in_thread, render, web_of
from ticketing.db import transaction
from ticketing.desk import Desk
from ticketing.incidents import describe, list_incidents
from ticketing.models import Incident

# Anyone may keep a copy for a minute: an outage brings many readers at once.
CACHE = "public, max-age=60"
ATOM = "http://www.w3.org/2005/Atom"
LABELS = {"investigating": "Investigating", "identified": "Identified",
          "monitoring": "Monitoring", "resolved": "Resolved"}


def component_states(components: tuple[str, ...], incidents: list[dict[str, Any]]) -> list[
        dict[str, str]]:
    """Each configured component: "operational", or the state of the open incident on it."""
    shown = []
    for name in components:
        on_it = [i for i in incidents if i["state"] != "resolved" and name in i["components"]]
        state = on_it[0]["state"] if on_it else "operational"
        shown.append({"name": name, "state": state,
                      "label": "Operational" if not on_it else f"Affected ({LABELS[state]})"})
    return shown


def _overview(desk: Desk) -> list[dict[str, Any]]:
    with transaction(desk.engine) as session:
        return list_incidents(session)


def _one(desk: Desk, number: int) -> dict[str, Any] | None:
    with transaction(desk.engine) as session:
        incident = session.get(Incident, number)
        return describe(session, incident) if incident is not None else None


def _cacheable(response: Response) -> Response:
    """The same page for everyone: no form token cookie, so a shared cache may keep it."""
    if "set-cookie" in response.headers:
        del response.headers["set-cookie"]
    response.headers["Cache-Control"] = CACHE
    return response


async def status_page(request: Request) -> Response:
    desk = web_of(request).desk
    incidents = await in_thread(_overview, desk)
    current = [i for i in incidents if i["state"] != "resolved"]
    history = [i for i in incidents if i["state"] == "resolved"]
    return _cacheable(render(
        request, "status.html", components=component_states(desk.settings.status.components,
                                                            incidents),
        current=current, history=history, labels=LABELS))


async def incident_page(request: Request) -> Response:
    desk = web_of(request).desk
    incident = await in_thread(_one, desk, int(request.path_params["number"]))
    if incident is None:
        raise HTTPException(404)
    return _cacheable(render(request, "status_incident.html", incident=incident, labels=LABELS))


def atom_feed(incidents: list[dict[str, Any]], base_url: str, title: str,
              now: datetime) -> bytes:
    """An Atom feed (RFC 4287): one entry per incident, its updates in the content."""
    ElementTree.register_namespace("", ATOM)
    feed = ElementTree.Element(f"{{{ATOM}}}feed")

    def add(parent: ElementTree.Element, name: str, text: str = "",
            **attributes: str) -> ElementTree.Element:
        element = ElementTree.SubElement(parent, f"{{{ATOM}}}{name}", attributes)
        if text:
            element.text = text
        return element

    add(feed, "title", f"{title} status")
    add(feed, "id", f"{base_url}/status")
    add(feed, "link", href=f"{base_url}/status/feed.atom", rel="self")
    add(feed, "link", href=f"{base_url}/status")
    newest = max((i["updated_at"] for i in incidents), default=now.isoformat())
    add(feed, "updated", newest)
    add(add(feed, "author"), "name", title)
    for incident in incidents:
        entry = add(feed, "entry")
        url = f"{base_url}/status/incidents/{incident['number']}"
        add(entry, "title", f"{incident['title']} ({LABELS[incident['state']]})")
        add(entry, "id", url)
        add(entry, "link", href=url)
        add(entry, "published", incident["opened_at"])
        add(entry, "updated", incident["updated_at"])
        lines = [f"{u['at']} {LABELS[u['state']]}: {u['text']}".rstrip(": ")
                 for u in incident["updates"]]
        if incident["components"]:
            lines.append("Affected: " + ", ".join(incident["components"]))
        add(entry, "content", "\n".join(lines), type="text")
    body: bytes = ElementTree.tostring(feed, encoding="utf-8", xml_declaration=True)
    return body


async def feed(request: Request) -> Response:
    desk = web_of(request).desk
    incidents = await in_thread(_overview, desk)
    body = atom_feed(incidents, desk.settings.web.url, desk.settings.support.name,
                     desk.clock.now())
    return Response(body, media_type="application/atom+xml",
                    headers={"Cache-Control": CACHE})
