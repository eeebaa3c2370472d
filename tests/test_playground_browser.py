"""The playground in a real browser: headless Chromium, driven by Selenium, against `gptlab serve`.

It needs Debian's chromium and chromium-driver (.ci/run installs them); without them it is skipped,
saying how to install them. It saves a screenshot of the page into pytest's temporary folder, or to
$GPTLAB_PLAYGROUND_SCREENSHOT; $GPTLAB_PLAYGROUND_RUN serves another run instead of the tiny test model
(docs/images/playground.png was made so, from the run `make demo` trains)."""

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="the playground's browser test needs Chromium and its driver; on Debian or Ubuntu: "
    "sudo apt-get update && sudo apt-get install -y chromium chromium-driver",
)
# chromium's own flags: no sandbox (containers), no GPU, and no traffic beyond the page's server
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1400",
]
SLOW_STREAM = 3000  # bytes per second: a few tokens a second, slow enough to watch and to stop


@pytest.fixture
def server(tiny_run):
    """`gptlab serve` on a free port of 127.0.0.1; yields its process and the page's address."""
    run = os.environ.get("GPTLAB_PLAYGROUND_RUN", str(tiny_run))
    command = [sys.executable, "-m", "gptlab", "serve", run, "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    url, said = None, []
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline and process.poll() is None:
        try:
            said.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        if "playground is at " in said[-1]:
            url = said[-1].split("playground is at ")[1].strip()
    try:
        assert url, f"gptlab serve did not start: {''.join(said)}"
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="gptlab-chromium-")
    options.add_argument(f"--user-data-dir={profile}")  # a fresh profile each run
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read at the end
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def byte_level_chunks(prompt: str, text: str) -> list[dict]:
    """The streamed choices /v1/completions sends for `text` after `prompt`, made by the server's own code
    with a BPE of the 256 bytes only (so every multi-byte character takes several tokens)."""
    from gptlab.serving.choices import ChoiceText, legacy_logprobs
    from gptlab.serving.engine import Step
    from gptlab.tokenizers import train_tokenizer

    tokenizer = train_tokenizer("bpe", [text], vocab_size=257)
    choice = ChoiceText(tokenizer, (), context=tokenizer.encode(prompt))
    chunks = []
    for token in tokenizer.encode(text):
        piece, tokens = choice.push(Step(token, -0.5, [(token, -0.5)]))
        if piece or tokens:  # what the server streams: nothing while a character is unfinished
            chunks.append({"index": 0, "text": piece, "logprobs": legacy_logprobs(tokenizer, tokens)})
    return chunks


def test_the_playground_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    process, url = server
    d = browser
    by_id = lambda name: d.find_element(By.ID, name)  # noqa: E731
    tokens = lambda: d.find_elements(By.CSS_SELECTOR, "#doc .tok")  # noqa: E731
    doc_text = lambda: by_id("doc").get_property("textContent")  # noqa: E731

    def wait(condition, seconds=30):
        return WebDriverWait(d, seconds, poll_frequency=0.05).until(lambda _: condition())

    def field(name, value):
        by_id(name).clear()
        by_id(name).send_keys(str(value))

    def finished():
        return by_id("generate").is_enabled() and not by_id("stop").is_enabled()

    # the page loads and finds the model
    d.get(url)
    assert d.title == "gptlab playground"
    wait(lambda: "context" in by_id("model").text)
    block_size = int(by_id("max_tokens").get_attribute("max"))
    field("max_tokens", block_size)
    field("temperature", 0.8)
    field("seed", 1)
    field("prompt", "The king")

    # tokens stream in (the network slowed down to watch them), and Stop ends the generation midway
    d.set_network_conditions(latency=0, download_throughput=SLOW_STREAM, upload_throughput=SLOW_STREAM)
    by_id("generate").click()
    seen = set()
    wait(lambda: seen.add(len(tokens())) or len(seen - {0}) >= 3)  # three different counts: it grows
    assert by_id("stop").is_enabled() and not by_id("generate").is_enabled()
    by_id("stop").click()
    wait(finished)
    d.delete_network_conditions()
    stopped = len(tokens())
    assert 3 <= stopped < block_size and "stopped by you" in by_id("stats").text
    time.sleep(0.5)
    assert len(tokens()) == stopped  # nothing more comes
    assert doc_text().startswith("The king")

    # a whole generation; every token is coloured by its probability
    field("max_tokens", block_size)
    by_id("generate").click()
    wait(lambda: finished() and "tokens" in by_id("stats").text)
    assert by_id("message").get_attribute("hidden") is not None  # no error shown
    assert "tok/s" in by_id("speed").text and by_id("speed").text != "– tok/s"
    spans = tokens()
    assert len(spans) >= 5
    assert len({s.value_of_css_property("background-color") for s in spans}) >= 2

    # hovering a token shows its top alternatives with their probabilities, the likeliest first
    target = next(i for i, s in enumerate(spans) if i >= 2 and len(s.get_property("textContent")) == 1)
    ActionChains(d).move_to_element(spans[target]).perform()
    popover = by_id("popover")
    wait(popover.is_displayed)
    alternatives = popover.find_elements(By.CSS_SELECTOR, ".alt")
    assert 1 <= len(alternatives) <= 6  # the top 5, and the sampled token where it is not among them
    shares = [float(a.find_element(By.CSS_SELECTOR, ".pct").text.strip("%<")) for a in alternatives]
    top5 = shares[:5]
    assert top5 == sorted(top5, reverse=True) and sum(top5) <= 100.5
    assert len(popover.find_elements(By.CSS_SELECTOR, ".alt.chosen")) == 1

    # clicking an alternative branches: the text up to that token, the alternative, a new continuation
    choice = next(a for a in alternatives if a.is_enabled() and "chosen" not in a.get_attribute("class"))
    picked = choice.get_attribute("data-token")
    before = "".join(
        s.get_property("textContent") for s in d.find_elements(By.CSS_SELECTOR, "#doc > span")[: target + 1]
    )
    ActionChains(d).move_to_element(choice).click().perform()
    wait(lambda: finished() and "tokens" in by_id("stats").text and len(tokens()) > target + 1)
    assert doc_text().startswith(before + picked)
    branch = d.find_elements(By.CSS_SELECTOR, "#doc .tok.branch")
    assert len(branch) == 1 and branch[0].get_property("textContent") == picked
    assert by_id("message").get_attribute("hidden") is not None

    # the keyboard reaches the alternatives too: focus a token, ↓ into its list, Escape back
    d.execute_script("arguments[0].focus()", tokens()[2])
    wait(popover.is_displayed)
    tokens()[2].send_keys(Keys.ARROW_DOWN)
    assert "alt" in d.switch_to.active_element.get_attribute("class")
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait(lambda: not popover.is_displayed())
    assert "tok" in d.switch_to.active_element.get_attribute("class")  # back on the token

    # look inside: an attention heatmap is drawn, with every head of the layer and the next-token bars
    by_id("inspect-toggle").click()
    wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#next .bar")) > 0)
    n_head = len(by_id("head").find_elements(By.TAG_NAME, "option"))
    assert n_head >= 1 and len(d.find_elements(By.CSS_SELECTOR, "#heads canvas")) == n_head
    colours = d.execute_script(
        """const c = document.getElementById("heatmap"), seen = new Set();
        const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < px.length; i += 4) seen.add(px.slice(i, i + 3).join());
        return [c.width, c.height, seen.size];"""
    )
    assert colours[0] > 100 and colours[1] > 100 and colours[2] > 20  # cells of many shades, not a blank canvas
    # the screenshot shows the alternatives of the least likely word-character token of the last line or so
    doubtful = d.execute_script(
        """const p = state.spans.map(spanProbability), from = Math.max(0, p.length - 24);
        const candidates = [...p.keys()].filter((i) => i >= from && /\\w/.test(state.spans[i].text));
        return candidates.reduce((a, b) => (p[b] < p[a] ? b : a), candidates[0] ?? p.length - 1);"""
    )
    ActionChains(d).move_to_element(d.find_element(By.CSS_SELECTOR, f'#doc [data-index="{doubtful}"]')).perform()
    wait(popover.is_displayed)
    height = d.execute_script("return document.documentElement.scrollHeight + outerHeight - innerHeight")
    d.set_window_size(1280, height)  # the whole page, and no more
    screenshot = Path(os.environ.get("GPTLAB_PLAYGROUND_SCREENSHOT", tmp_path / "playground.png"))
    assert d.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    # a character cut into byte-level tokens shows whole, as one span, whatever the tokenizer: the chunks the
    # server streams for such tokens (its own code, on a BPE of bytes only) go through the page's own function
    text = "café 😀 naïve"
    spans = d.execute_script(
        """state.prompt = "The "; state.spans = []; renderDoc();
        for (const choice of arguments[0]) addChoice(choice);
        return [...document.querySelectorAll("#doc .tok")].map((el) => [el.textContent, Number(el.dataset.tokens)]);""",
        byte_level_chunks("The ", text),
    )
    assert "".join(piece for piece, _ in spans) == text
    assert ["é", 2] in spans and ["😀", 4] in spans and ["ï", 2] in spans
    assert all(n == 1 for piece, n in spans if piece.isascii())

    # nothing went wrong in the browser's console
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []

    # failures show on the page: settings the server refuses, then the server gone
    field("temperature", -1)
    by_id("generate").click()
    wait(lambda: by_id("message").is_displayed())
    assert "temperature" in by_id("message-text").text and finished()
    field("temperature", 0.8)
    process.terminate()
    process.wait(timeout=15)
    by_id("message-close").click()
    by_id("generate").click()
    wait(lambda: by_id("message").is_displayed())
    assert "Cannot reach the gptlab server" in by_id("message-text").text and finished()
