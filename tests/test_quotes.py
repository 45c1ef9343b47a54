"""Quote and signature cutting, on real replies from the corpus and on each client's style."""

from __future__ import annotations

import csv
from pathlib import Path
from textwrap import dedent

import pytest

from tests.servers import corpus_dir
from ticketing.htmltext import html_to_text
from ticketing.parse import parse_mail
from ticketing.quotes import REPLY_MARKER, cut_reply

FOLDERS = ("mailgun-talon/", "mailgun-talon-bodies/", "zapier-email-reply-parser/")

# corpus file -> (phrases of the new text that stay, phrases of history or signature that go)
CORPUS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mailgun-talon/reply-quotations-share-block.eml": (
        ("Are there and dietry restrictions", "Joe XXX"),
        ("New Booking Inquiry", "You've got a new booking inquiry", "wrote:"),
    ),
    "mailgun-talon/standard_replies/android.eml": (("Hello",), ("написал", "mailgun.org", ">")),
    "mailgun-talon/standard_replies/apple_mail.eml": (("Hello",), ("bob wrote", "Hi")),
    "mailgun-talon/standard_replies/apple_mail_2.eml": (("Hello",), ("Adam Renberg", "Hi there")),
    "mailgun-talon/standard_replies/comcast.eml": (("Hello",), ("Original Message", "Test")),
    "mailgun-talon/standard_replies/gmail.eml": (("Hello",), ("Megan One", "Hi")),
    "mailgun-talon/standard_replies/hotmail.eml": (("Hello",), ("Subject: Test", "Hi")),
    "mailgun-talon/standard_replies/iphone.eml": (("Hello",), ("Sent from my iPhone", "Hi")),
    "mailgun-talon/standard_replies/yahoo.eml": (("Hello",), ("Original Message", "Hi")),
    "mailgun-talon-bodies/OLK_SRC_BODY_SECTION.html": (("Reply",), ("bob@example.com", "Hi")),
    "mailgun-talon-bodies/html_replies/gmail.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "Sasha", "wrote:"),
    ),
    "mailgun-talon-bodies/html_replies/hotmail.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "Subject: Test message"),
    ),
    "mailgun-talon-bodies/html_replies/mail_ru.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "abc@example.com"),
    ),
    "mailgun-talon-bodies/html_replies/ms_outlook_2003.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "Sent: Friday"),
    ),
    "mailgun-talon-bodies/html_replies/ms_outlook_2007.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "Sent: Thursday"),
    ),
    "mailgun-talon-bodies/html_replies/ms_outlook_2010.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "On Behalf Of"),
    ),
    "mailgun-talon-bodies/html_replies/thunderbird.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "wrote:"),
    ),
    "mailgun-talon-bodies/html_replies/windows_mail.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "Отправлено"),
    ),
    "mailgun-talon-bodies/html_replies/yandex_ru.html": (
        ("Hi. I am fine.", "Alex"),
        ("Hello! How are you?", "abc@example.com"),
    ),
    "mailgun-talon-bodies/standard_replies/iphone_reply_text": (("Hello",), ("iPhone",)),
    "mailgun-talon-bodies/standard_replies/sparrow_reply_text": (("Hello",), ("Sparrow", "xxx")),
    "zapier-email-reply-parser/correct_sig.txt": (
        ("this is an email with a correct -- signature.",),
        ("rick",),
    ),
    "zapier-email-reply-parser/email_1_1.txt": (
        ("What is the best way to clear a Riak bucket", "-Abhishek Kona"),
        ("riak-users mailing list", "listinfo"),
    ),
    "zapier-email-reply-parser/email_1_2.txt": (
        ("Hi,", "You can list the keys for the bucket", "delete them all individually"),
        ("Abhishek Kona", "Hi folks", "mailing list"),
    ),
    "zapier-email-reply-parser/email_1_4.txt": (
        ("Awesome! I haven't had another problem with it.",),
        ("Loader seems to be working well", "defunkt"),
    ),
    "zapier-email-reply-parser/email_1_5.txt": (
        ("Here's what I've got.", "- This is the fourth bullet point", "- And another one",
         "It goes on and on"),
        (),
    ),
    "zapier-email-reply-parser/email_1_6.txt": (
        ("I get proper rendering as well.",),
        ("Was this caching related", "Corey Donohoe", "magnificent torch of pixels"),
    ),
    "zapier-email-reply-parser/email_1_7.txt": ((":+1:",), ("Steps 0-2", "Chris Wanstrath")),
    "zapier-email-reply-parser/email_1_8.txt": (
        ("I will reply under this one", "and under this."),
        ("After you reply to this I'm going to send you", "this is my signature"),
    ),
    "zapier-email-reply-parser/email_2_1.txt": (
        ("Outlook with a reply",),
        ("Google Apps Sync", "Dear Google", "------"),
    ),
    "zapier-email-reply-parser/email_2_2.txt": (
        ("Outlook with a reply directly above line",),
        ("CRM Comments", "A new comment has been added", "____"),
    ),
    "zapier-email-reply-parser/email_2_3.txt": (
        ("Outlook with a reply above headers using unusual format",),
        ("Kim via Site", "Ei tale aliquam"),
    ),
    "zapier-email-reply-parser/email_BlackBerry.txt": (
        ("Here is another email",),
        ("BlackBerry",),
    ),
    "zapier-email-reply-parser/email_bullets.txt": (
        ("test 2 this should list second", "and retain this formatting", "- and another"),
        ("Give us an example", "Joe Smith"),
    ),
    "zapier-email-reply-parser/email_gmail.txt": (
        ("This is a test for inbox replying to a github message.",),
        ("Steven Scott", "too lazy to increment", "You are receiving this"),
    ),
    "zapier-email-reply-parser/email_headers_no_delimiter.txt": (
        ("And another reply!",),
        ("Dan Watson", "Re: New Issue", "This is a message.", "iPhone"),
    ),
    "zapier-email-reply-parser/email_iPhone.txt": (("Here is another email",), ("iPhone",)),
    "zapier-email-reply-parser/email_multi_word_sent_from_my_mobile_device.txt": (
        ("Here is another email",),
        ("Verizon Wireless BlackBerry",),
    ),
    "zapier-email-reply-parser/email_one_is_not_on.txt": (
        ("Thank, this is really helpful.", "One outstanding question I had:",
         "Locally (on development), when I run..."),
        ("Dave Tapley", "much better query"),
    ),
    "zapier-email-reply-parser/email_partial_quote_header.txt": (
        ("On your remote host you can run:", "telnet 127.0.0.1 52698",
         "the tunnel is not working."),
        ("George Plymale", "port forwarding stopped"),
    ),
    "zapier-email-reply-parser/email_sent_from_my_not_signature.txt": (
        ("Here is another email", "Sent from my desk, is much easier then my mobile phone."),
        (),
    ),
    "zapier-email-reply-parser/email_sig_delimiter_in_middle_of_line.txt": (
        ("Stuff happened.", "And here is a fix -- this is not a signature.", "kthxbai"),
        (),
    ),
    "zapier-email-reply-parser/greedy_on.txt": (
        ("On your remote host you can run:", "the tunnel is not working."),
        ("George Plymale", "Reply to this email directly"),
    ),
    "zapier-email-reply-parser/pathological.txt": (
        ("I think you're onto something.", "get back to a computer."),
        ("John Sullivan", "reference_alignment", "ATGGAGAGAATAAAGG"),
    ),
}


def body_of(path: Path) -> str:
    """The text a reply's body reaches cut_reply with: parsed mail, HTML turned text, or as is."""
    raw = path.read_bytes()
    if path.suffix == ".eml":
        return parse_mail(raw).text
    if path.suffix == ".html":
        return html_to_text(raw.decode("utf-8"))
    return raw.decode("utf-8")


def test_every_reply_fixture_in_the_corpus_is_checked() -> None:
    with (corpus_dir() / "MANIFEST.tsv").open(encoding="utf-8", newline="") as manifest:
        listed = {row["local_path"] for row in csv.DictReader(manifest, delimiter="\t")}
    assert {path for path in listed if path.startswith(FOLDERS)} == set(CORPUS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_reply_keeps_new_text_and_drops_history_and_signature(name: str) -> None:
    kept, gone = CORPUS[name]
    text = body_of(corpus_dir() / name)
    new = cut_reply(text)
    for phrase in kept:
        assert phrase in new
    for phrase in gone:
        assert phrase in text  # the phrase really was in the mail
        assert phrase not in new


def cut(text: str) -> str:
    return cut_reply(dedent(text).lstrip("\n"))


HISTORY = "Please restart the router and tell us if the light turns green."


# Our own marker, as it comes back


def test_our_marker_cuts_everything_below_it() -> None:
    new = cut(f"""
        It turned green, thanks.

        {REPLY_MARKER}

        Agent Smith: {HISTORY}
        """)
    assert new == "It turned green, thanks."


def test_our_marker_quoted_goes_with_its_attribution_and_the_quote() -> None:
    new = cut(f"""
        It turned green, thanks.

        On Mon, 3 Feb 2020 at 10:00, Support <support@example.com> wrote:

        > {HISTORY}
        >
        > {REPLY_MARKER}
        > Earlier: the router is blinking red.
        """)
    assert new == "It turned green, thanks."


def test_our_marker_wrapped_by_the_client_is_still_found() -> None:
    new = cut(f"""
        It turned green, thanks.

        On Mon, 3 Feb 2020 at 10:00, Support via Helpdesk <support@example.com>
        wrote:
        > ##- Please type your reply above this
        > line -##
        > {HISTORY}
        """)
    assert new == "It turned green, thanks."


def test_our_marker_at_the_top_of_the_quote_takes_a_german_attribution_along() -> None:
    new = cut(f"""
        Jetzt geht es.

        Am 03.02.2020 um 10:00 schrieb Support <support@example.com>:
        > {REPLY_MARKER}
        > {HISTORY}
        """)
    assert new == "Jetzt geht es."


def test_answer_written_below_our_quoted_marker_is_kept() -> None:
    new = cut(f"""
        On Mon, 3 Feb 2020 at 10:00, Support <support@example.com> wrote:
        > {REPLY_MARKER}
        > {HISTORY}

        It turned green after the restart.
        """)
    assert new == "It turned green after the restart."


# Attributions of the major clients


@pytest.mark.parametrize(
    "attribution",
    [
        "On Mon, Feb 3, 2020 at 10:00 AM Jane Doe <jane@example.com> wrote:",  # Gmail
        "On Mon, Feb 3, 2020 at 10:00 AM Jane Doe <jane@example.com>\nwrote:",  # Gmail wrapped
        "On 3 Feb 2020, at 10:00, Jane Doe <jane@example.com> wrote:",  # Apple Mail
        "On 03/02/2020 10:00, Jane Doe wrote:",  # Thunderbird
        "Am Mo., 3. Feb. 2020 um 10:00 Uhr schrieb Jane Doe <jane@example.com>:",
        "Le lun. 3 févr. 2020 à 10:00, Jane Doe <jane@example.com> a écrit :",
        "El lun., 3 feb. 2020 a las 10:00, Jane Doe (<jane@example.com>) escribió:",
        "Il giorno lun 3 feb 2020 alle ore 10:00 Jane Doe <jane@example.com> ha scritto:",
        "Op ma 3 feb. 2020 om 10:00 schreef Jane Doe <jane@example.com>:",
        "Den mån 3 feb. 2020 kl 10:00 skrev Jane Doe <jane@example.com>:",
        "man. 3. feb. 2020 kl. 10.00 skrev Jane Doe <jane@example.com>:",
        "W dniu 3.02.2020 o 10:00, Jane Doe <jane@example.com> pisze:",
        "Em seg., 3 de fev. de 2020 às 10:00, Jane Doe <jane@example.com> escreveu:",
        "пн, 3 февр. 2020 г. в 10:00, Jane Doe <jane@example.com>:",
        "3 февраля 2020, Jane Doe написал(а):",
    ],
)
def test_attribution_and_quote_below_it_are_cut(attribution: str) -> None:
    text = f"Works now.\n\n{attribution}\n\n> {HISTORY}\n> Regards, Jane\n"
    assert cut_reply(text) == "Works now."


@pytest.mark.parametrize(
    "attribution",
    [
        "On Mon, Feb 3, 2020 at 10:00 AM Jane Doe <jane@example.com> wrote:",
        "Am 03.02.2020 um 10:00 schrieb Jane Doe <jane@example.com>:",
        "Le 3 févr. 2020 à 10:00, Jane Doe a écrit :",
    ],
)
def test_history_below_an_attribution_without_quote_marks_is_cut(attribution: str) -> None:
    # What an HTML reply's blockquote looks like once turned into text.
    text = f"Works now.\n\n{attribution}\n\n{HISTORY}\n\nRegards, Jane\n"
    assert cut_reply(text) == "Works now."


def test_apple_mail_quoting_its_own_attribution_is_cut() -> None:
    new = cut(f"""
        Works now.

        > On 3 Feb 2020, at 10:00, Jane Doe <jane@example.com> wrote:
        >
        > {HISTORY}
        """)
    assert new == "Works now."


# Outlook


def test_outlook_original_message_block_is_cut() -> None:
    new = cut(f"""
        Works now.

        -----Original Message-----
        From: Jane Doe [mailto:jane@example.com]
        Sent: Monday, February 3, 2020 10:00 AM
        To: Support
        Subject: Router

        {HISTORY}
        """)
    assert new == "Works now."


def test_outlook_desktop_bold_header_block_is_cut() -> None:
    new = cut(f"""
        Works now.

        *From:* Jane Doe <jane@example.com>
        *Sent:* Monday, February 3, 2020 10:00 AM
        *To:* Support <support@example.com>
        *Subject:* RE: [#12] Router

        {HISTORY}
        """)
    assert new == "Works now."


def test_outlook_web_header_block_under_a_line_is_cut() -> None:
    new = cut(f"""
        Works now.

        ________________________________
        From: Jane Doe <jane@example.com>
        Sent: Monday, February 3, 2020 10:00:00 AM
        To: Support
        Subject: Router

        {HISTORY}
        """)
    assert new == "Works now."


@pytest.mark.parametrize(
    "header",
    [
        "Von: Jane Doe <jane@example.com>\nGesendet: Montag, 3. Februar 2020 10:00\n"
        "An: Support\nBetreff: Router",
        "De : Jane Doe <jane@example.com>\nEnvoyé : lundi 3 février 2020 10:00\n"
        "À : Support\nObjet : Router",
        "De: Jane Doe <jane@example.com>\nEnviado: lunes, 3 de febrero de 2020 10:00\n"
        "Para: Support\nAsunto: Router",
        "Van: Jane Doe <jane@example.com>\nVerzonden: maandag 3 februari 2020 10:00\n"
        "Aan: Support\nOnderwerp: Router",
    ],
)
def test_outlook_header_block_in_other_languages_is_cut(header: str) -> None:
    text = f"Works now.\n\n{header}\n\n{HISTORY}\n"
    assert cut_reply(text) == "Works now."


# Quoted lines and signatures


def test_quoted_lines_at_the_end_are_cut_without_an_attribution() -> None:
    assert cut(f"Works now.\n\n> {HISTORY}\n> Jane\n") == "Works now."


def test_unknown_attribution_ending_with_colon_goes_with_its_quote() -> None:
    assert cut(f"Works now.\n\nJane Doe wrote:\n> {HISTORY}\n") == "Works now."


def test_inline_answers_between_quotes_are_kept() -> None:
    new = cut("""
        On Mon, Feb 3, 2020 at 10:00 AM Jane Doe <jane@example.com> wrote:
        > Is the light green?

        Yes, it is green now.

        > Did you restart the router?

        I did, twice.

        > Old history at the end.
        """)
    assert "Yes, it is green now." in new
    assert "I did, twice." in new
    assert "Old history at the end." not in new


def test_signature_after_dash_dash_space_is_cut() -> None:
    assert cut("Works now.\n\n-- \nJane Doe\nACME Corp, +1 555 0100\n") == "Works now."


@pytest.mark.parametrize(
    "line",
    [
        "Sent from my iPhone",
        "Sent from my iPad",
        "Sent from my Android phone",
        "Sent from my Samsung Galaxy smartphone.",
        "Get Outlook for iOS<https://aka.ms/o0ukef>",
        "Get Outlook for Android",
        "Gesendet von meinem iPhone",
        "Envoyé de mon iPhone",
    ],
)
def test_sent_from_my_device_line_is_cut(line: str) -> None:
    assert cut_reply(f"Works now.\n\n{line}\n") == "Works now."


def test_sent_from_my_device_between_reply_and_quote_is_cut() -> None:
    new = cut(f"""
        Works now.

        Sent from my iPhone

        On 3 Feb 2020, at 10:00, Jane Doe <jane@example.com> wrote:

        > {HISTORY}
        """)
    assert new == "Works now."


# What must stay


def test_forwarded_message_is_kept_whole() -> None:
    new = cut("""
        Please look at the message below.

        ---------- Forwarded message ---------
        From: Jane Doe <jane@example.com>
        Date: Mon, Feb 3, 2020 at 10:00 AM
        Subject: Router
        To: Bob <bob@example.com>

        The router in room 4 is broken.
        """)
    assert "Please look at the message below." in new
    assert "The router in room 4 is broken." in new


def test_a_sentence_starting_with_on_is_not_an_attribution() -> None:
    new = cut("""
        On Monday the backup script wrote:
        disk full
        What should I do?
        """)
    assert "disk full" in new
    assert "What should I do?" in new


def test_reply_of_quote_only_comes_back_stripped() -> None:
    text = f"\n> {HISTORY}\n> Jane\n\n"
    assert cut_reply(text) == text.strip()


def test_reply_of_signature_only_is_not_emptied() -> None:
    assert cut_reply("Sent from my iPhone\n") == "Sent from my iPhone"


def test_crlf_line_endings_are_read_as_lines() -> None:
    text = f"Works now.\r\n\r\nOn 03/02/2020 10:00, Jane Doe wrote:\r\n> {HISTORY}\r\n"
    assert cut_reply(text) == "Works now."
