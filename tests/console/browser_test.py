"""Drives the console in headless Chromium through WebDriver (Selenium): sign in, open a user's
sessions, send a message and see the streamed reply, approve a pending action and see the agent
finish, and check that a message holding HTML shows as text and runs nothing. A screenshot of each
step goes to the output folder.

Usage: python3 tests/console/browser_test.py BASE_URL API_KEY OUT_DIR"""
import os
import shutil
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, key, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)

options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"]:
    options.add_argument(argument)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 30, poll_frequency=0.05)


def shot(name):
    driver.save_screenshot(os.path.join(out, f"console-{name}.png"))


def main_text():
    return driver.find_element(By.ID, "main").text


def until_text(text):
    try:
        wait.until(lambda d: text in main_text())
    except Exception:
        shot("failure")
        raise AssertionError(f"{text!r} never appeared; the page shows:\n{main_text()}")


def no_alert():
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError(f"a script ran: alert {alert.text!r}")


def send(message):
    # The form of the page as it is now (a turn redraws it when it ends).
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[name=send]:not([disabled])"))
    box = wait.until(EC.element_to_be_clickable((By.NAME, "message")))
    box.clear()
    box.send_keys(message)
    # Ctrl+Enter sends, from the keyboard.
    box.send_keys(Keys.CONTROL, Keys.ENTER)


try:
    # Sign in with the tenant's API key.
    driver.get(base + "/console/")
    wait.until(EC.presence_of_element_located((By.NAME, "key")))
    driver.find_element(By.NAME, "key").send_keys(key)
    driver.find_element(By.NAME, "tenant").send_keys("acme")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    until_text("Recent activity in this tenant")
    until_text("user u1")
    shot("signed-in")

    # One user's sessions, then the session.
    driver.find_element(By.NAME, "user").send_keys("u1" + Keys.ENTER)
    until_text("User u1")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "ul.list a"))
    assert "active" in main_text()
    shot("sessions")
    driver.find_elements(By.CSS_SELECTOR, "ul.list a")[0].click()
    until_text("hello from the test")
    until_text("turn completed")
    until_text("2 messages")
    # The first message's client metadata looks like actions, a model, usage and a turn status:
    # none of it is drawn as the server's.
    for forged in ["forged-model", "forged_tool", "forged-status", "tokens 1 in"]:
        assert forged not in main_text(), forged + " was drawn from a user message's metadata"
    assert not driver.find_elements(By.CSS_SELECTOR, "article.message.user .action"), "an action card on a user message"

    # A message, and its reply as it streams: the text grows in the live reply while the turn runs.
    send("stream please")
    wait.until(lambda d: "Echo: stream" in "".join(
        e.text for e in d.find_elements(By.CSS_SELECTOR, "article[aria-live]")) and
        d.find_elements(By.CSS_SELECTOR, "button[name=send][disabled]"))
    until_text("Echo: stream please [history")
    shot("streamed")

    # A connection cut after the first delta: the console picks the turn up again from its last
    # event, and the reply shows once, whole.
    driver.execute_script('''
        const original = window.fetch;
        window.__cut = true;
        window.__resumed = 0;
        window.fetch = async (input, init) => {
            const url = String(input);
            if (url.includes("/events")) window.__resumed += 1;
            const response = await original(input, init);
            if (!window.__cut || !url.endsWith("agent/process")) return response;
            window.__cut = false;
            const reader = response.body.getReader();
            let cut = false;
            const body = new ReadableStream({ async pull(c) {
                if (cut) { reader.cancel(); c.close(); return; }
                const { value, done } = await reader.read();
                if (done) { c.close(); return; }
                c.enqueue(value);
                if (new TextDecoder().decode(value).includes("event: delta")) cut = true;
            } });
            return new Response(body, { status: response.status, headers: response.headers });
        };''')
    send("a reply long enough to be cut off in the middle of its stream")
    until_text("Echo: a reply long enough to be cut off in the middle of its stream [history")
    assert driver.execute_script("return window.__resumed") >= 1, "the turn's events were followed again"
    assert main_text().count("Echo: a reply long enough") == 1, "the reply shows once"
    shot("resumed")

    # An action that waits for approval; approving it lets the agent finish.
    send('book it\n@tool create_resource {"resourceType": "appointments", "data": {"time": "10:00"}}')
    wait.until(lambda d: d.find_elements(By.XPATH, "//button[text()='Approve']"))
    until_text("pending_approval")
    shot("approval")
    driver.find_element(By.XPATH, "//button[text()='Approve']").click()
    until_text("The user approved create_resource")
    assert not driver.find_elements(By.XPATH, "//button[text()='Approve']"), "the action is decided"
    shot("approved")

    # HTML in a message is text: shown as written, nothing runs, no element is made of it.
    payload = "<img src=x onerror=alert(1)>"
    send(payload)
    until_text("Echo: " + payload)
    time.sleep(0.5)
    no_alert()
    assert not driver.find_elements(By.CSS_SELECTOR, "#main img"), "the message became an element"
    assert payload in main_text()
    shot("html-as-text")

    # The Agents page: create one with a write-only key, make it the default, edit it.
    secret = "console-agent-secret-key"
    driver.get(base + "/console/#/agents")
    until_text("No agents yet")
    driver.find_element(By.LINK_TEXT, "New agent").click()
    wait.until(EC.presence_of_element_located((By.NAME, "agentId")))
    driver.find_element(By.NAME, "agentId").send_keys("desk")
    driver.find_element(By.NAME, "name").send_keys("Front desk")
    driver.find_element(By.NAME, "systemPrompt").send_keys("You are the front desk.")
    driver.find_element(By.NAME, "default").click()
    driver.find_element(By.NAME, "temperature").send_keys("0.5")
    driver.find_element(By.NAME, "apiUrl").send_keys("https://api.example.com/v1")
    driver.find_element(By.NAME, "apiKey").send_keys(secret)
    driver.find_element(By.XPATH, "//button[text()='Create agent']").click()
    until_text("Agent desk")
    until_text("version 1")
    wait.until(lambda d: d.find_element(By.NAME, "apiKey").get_attribute("value") == "")
    assert "one is set" in main_text(), "the key shows as set"
    assert secret not in driver.page_source, "the key is never shown"
    shot("agent-created")
    name = driver.find_element(By.NAME, "name")
    name.clear()
    name.send_keys("Front desk 2")
    driver.find_element(By.XPATH, "//button[text()='Save']").click()
    until_text("version 2")
    driver.get(base + "/console/#/agents")
    until_text("Front desk 2")
    until_text("default")
    shot("agents")
    assert secret not in driver.page_source

    # The Usage page: the month's totals, a chart of the days drawn in SVG, by user and model.
    driver.get(base + "/console/#/usage")
    until_text("By model")
    until_text("echo")
    assert driver.find_elements(By.CSS_SELECTOR, "#main svg.chart rect.bar"), "a bar for today"
    assert "u1" in main_text()
    assert "Per user and day" in main_text(), "the budgets"
    shot("usage")

    # The Channels page: the tenant's WhatsApp channel, and the reply the provider refused.
    driver.get(base + "/console/#/channels")
    until_text("whatsapp")
    until_text("answered without a message id")
    shot("channels")

    # A phone-width window: nothing overflows sideways.
    driver.set_window_size(390, 844)
    time.sleep(0.5)
    assert not driver.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1"), "overflow"
    shot("narrow")

    # No script errors, and the Content-Security-Policy blocked nothing the console needs (an API
    # answer of 4xx is logged as a network error; the sign-in check expects one).
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, errors
    print("console: every step passed")
finally:
    driver.quit()
