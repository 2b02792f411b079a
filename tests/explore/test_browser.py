"""The explorer in a real browser: Debian's headless Chromium driven by Selenium through Debian's
chromium-driver (the WebDriver built from the same Chromium source as the browser, so their versions
always match, and nothing is downloaded), against the real server (uvicorn on a free loopback port)
over a tiny run.

Steps: load the page; type a prompt and send it; see an answer streamed into every column (base,
finetuned, steered, amplified) and equal to the API's greedy answer; move the α slider to 0 and see the
steered answer change (to the finetuned model's); paste a text, show its heat map and check every
token's KL and ‖Δh‖ against a naive computation from the models; click a token and see what the
finetune raised and lowered there; open the Patchscope, Examples (and page on) and Run views. With
``DIFFLENS_EXPLORE_SCREENSHOTS=DIR`` each view is saved as a PNG there.

Also here, without the browser: a client that disconnects mid-stream from the real server stops its
generation, and the server goes on serving.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from difflens.explore import ThreadedServer, create_app
from explore_runs import service, tiny_explore  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
PROMPT = "tell me a story"
TEXT = "the cat sat on the mat and the dog ran to the river with some music"


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1480,1000", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def _api_answer(url: str, model: str, **extra) -> str:
    import httpx

    r = httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": PROMPT}],
                                                       "temperature": 0, "max_tokens": 8, **extra}, timeout=30)
    return r.json()["choices"][0]["message"]["content"]


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="chromium / chromium-driver are not installed (make browser: apt-get install chromium "
                           "chromium-driver)")
def test_explorer_in_a_real_browser(service, tiny_explore, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    pair, layout, _ = tiny_explore
    shots = Path(os.environ.get("DIFFLENS_EXPLORE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with ThreadedServer(create_app(service, layout=layout)) as srv:
        expected = {m: _api_answer(srv.url, m) for m in ("base", "finetuned", "steered-p1", "amplified")}
        expected["steered-alpha0"] = _api_answer(srv.url, "steered-p1", alpha=0)
        assert expected["steered-p1"] != expected["finetuned"] == expected["steered-alpha0"]
        d = _driver()
        try:
            # a streamed answer re-renders its column: an element found a moment ago may be gone
            wait = WebDriverWait(d, 30, ignored_exceptions=(StaleElementReferenceException,))
            d.get(srv.url + "/")
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            # 1. a prompt to every model, answers streamed into each column
            for sel, value in (("#temperature", "0"), ("#max-tokens", "8"), ("#seed", "0")):
                box = d.find_element(By.CSS_SELECTOR, sel)
                box.clear()
                box.send_keys(value)
            d.find_element(By.CSS_SELECTOR, "#prompt").send_keys(PROMPT)
            d.find_element(By.CSS_SELECTOR, "#send").click()
            cols = {"base": "base", "finetuned": "finetuned", "steered": "steered-p1", "amplified": "amplified"}

            def answer(col: str, done: bool = True) -> str | None:
                a = d.find_element(By.CSS_SELECTOR, f'.col[data-model="{col}"] .turn .answer')
                return a.text if (a.get_attribute("data-done") == "1" or not done) else None

            wait.until(lambda d: all(answer(c) is not None for c in cols))
            for col, model in cols.items():
                assert answer(col) == expected[model] and answer(col), col
                meta = d.find_element(By.CSS_SELECTOR, f'.col[data-model="{col}"] .turn .meta').text
                assert "seed 0" in meta and "T 0" in meta and "8 tokens" in meta, meta
            assert "α 40 at j = 1" in d.find_element(By.CSS_SELECTOR, '.col[data-model="steered"] .meta').text
            d.save_screenshot(str(shots / "explore-chat.png"))
            # 2. the α slider to 0: the steered column answers again, now as the finetuned model does
            before = answer("steered")
            d.find_element(By.CSS_SELECTOR, '.col[data-model="steered"] input[type=range]').send_keys(Keys.HOME)
            wait.until(lambda d: answer("steered") not in (None, before))
            assert answer("steered") == expected["steered-alpha0"]
            assert "α 0 at j = 1" in d.find_element(By.CSS_SELECTOR, '.col[data-model="steered"] .meta').text
            # 3. a pasted text: coloured tokens carrying the library's values
            d.find_element(By.CSS_SELECTOR, 'button[data-tab="text"]').click()
            d.find_element(By.CSS_SELECTOR, "#text").send_keys(TEXT)
            d.find_element(By.CSS_SELECTOR, "#heat-go").click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#heat").get_attribute("data-ready") == "1")
            spans = d.find_elements(By.CSS_SELECTOR, "#heat .tk")
            from difflens.models.tokens import encode

            ids = encode(pair.tokenizer, pair.arch, TEXT)
            assert len(spans) == len(ids)
            x = torch.tensor([ids])
            with torch.no_grad():
                ob = pair.base_lm.model(input_ids=x, output_hidden_states=True)
                of = pair.ft_lm.model(input_ids=x, output_hidden_states=True)
            lb, lf = ob.logits[0].float(), of.logits[0].float()
            kl = (F.softmax(lf, -1) * (F.log_softmax(lf, -1) - F.log_softmax(lb, -1))).sum(-1).tolist()
            li = service.layer
            norm = (of.hidden_states[li + 1][0] - ob.hidden_states[li + 1][0]).norm(dim=-1).tolist()
            shown_kl = [float(s.get_attribute("data-kl")) for s in spans]
            shown_norm = [float(s.get_attribute("data-norm")) for s in spans]
            assert shown_kl == pytest.approx(kl, rel=1e-4, abs=1e-5)
            assert shown_norm == pytest.approx(norm, rel=1e-4, abs=1e-5)
            # coloured by KL: the largest KL after the first token gets the darkest background
            alphas = [float(s.get_attribute("data-alpha")) for s in spans]
            assert max(alphas) == pytest.approx(0.85, abs=1e-3) and alphas.index(max(alphas[1:])) == \
                1 + kl[1:].index(max(kl[1:]))
            assert all("rgba(194, 65, 12" in s.get_attribute("style") for s in spans[1:])
            spans[3].click()
            info = d.find_element(By.CSS_SELECTOR, "#tokinfo").text
            assert "raised most by the finetune" in info and "lowered most" in info and "token 3" in info
            d.save_screenshot(str(shots / "explore-text.png"))
            # 4. the run's views, rendered by the report
            d.find_element(By.CSS_SELECTOR, 'button[data-tab="patchscope"]').click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#view-patchscope").get_attribute("data-loaded") == "1")
            assert "λ =" in d.find_element(By.CSS_SELECTOR, "#view-patchscope").text
            d.find_element(By.CSS_SELECTOR, '#view-patchscope button[data-scales="open"]').click()
            scales = d.find_elements(By.CSS_SELECTOR, "#view-patchscope details.scales")
            assert scales and all(x.get_attribute("open") is not None for x in scales)
            d.save_screenshot(str(shots / "explore-patchscope.png"))
            d.find_element(By.CSS_SELECTOR, 'button[data-tab="examples"]').click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#view-examples").get_attribute("data-loaded") == "1")
            assert "page 1 of 3" in d.find_element(By.CSS_SELECTOR, ".examplesctl").text
            d.find_element(By.CSS_SELECTOR, '.examplesctl button[data-examples-page="1"]').click()
            wait.until(lambda d: "page 2 of 3" in d.find_element(By.CSS_SELECTOR, ".examplesctl").text)
            d.save_screenshot(str(shots / "explore-examples.png"))
            d.find_element(By.CSS_SELECTOR, 'button[data-tab="run"]').click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#view-run").get_attribute("data-loaded") == "1")
            assert "Stages" in d.find_element(By.CSS_SELECTOR, "#view-run").text
            d.save_screenshot(str(shots / "explore-run.png"))
            logs = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
            assert not logs, logs
        finally:
            d.quit()


def test_a_client_that_disconnects_mid_stream_stops_its_generation(service, tiny_explore, monkeypatch):
    import httpx

    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    _, layout, _ = tiny_explore
    seen: list[int] = []
    fast = service.generate_ids

    def slowly(*a, **kw):  # 60 tokens at 50 ms: 3 s, unless the job is cancelled
        for item in fast(*a, **kw):
            time.sleep(0.05)
            seen.append(item[0])
            yield item

    monkeypatch.setattr(service, "generate_ids", slowly)
    with ThreadedServer(create_app(service, pages=False)) as srv:
        body = {"model": "finetuned", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 60,
                "stream": True, "temperature": 1.0}
        with httpx.stream("POST", f"{srv.url}/v1/chat/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(4)]  # role chunk, blank, first token, blank
            assert json.loads(got[2][6:])["choices"][0]["delta"]["content"]
        t0 = time.time()
        while service.running is not None and time.time() - t0 < 5:
            time.sleep(0.02)
        assert service.running is None and len(seen) < 30  # stopped well before its 60 tokens
        r = httpx.post(f"{srv.url}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
