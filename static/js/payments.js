// Card payments (SPEC M1): Stripe.js collects a new card with a SetupIntent, then the form is
// submitted with the PaymentMethod id; the server charges it. With the saved card the form
// works without this file. The confirm page lets Stripe.js finish an authentication.
(() => {
  const csrfToken = (root) => {
    const input = root.querySelector("input[name=csrfmiddlewaretoken]") ||
      document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  };

  const say = (el, text, isError) => {
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("errorlist", Boolean(isError));
    el.setAttribute("role", isError ? "alert" : "status");
  };

  function setUpAddCredits(form) {
    if (typeof Stripe === "undefined") return;
    const stripe = Stripe(form.dataset.publishableKey);
    const status = form.querySelector("#payment-status");
    const button = form.querySelector("#pay-button");
    const newCard = form.querySelector("#new-card");
    const custom = form.querySelector("#id_amount_custom");
    let card = null;

    const wantsNewCard = () => {
      const choice = form.querySelector("input[name=card]:checked") ||
        form.querySelector("input[name=card]");
      return !choice || choice.value === "new";
    };
    const showCard = () => {
      newCard.hidden = !wantsNewCard();
      if (!newCard.hidden && !card) {
        card = stripe.elements().create("card");
        card.mount("#card-element");
      }
    };
    for (const radio of form.querySelectorAll("input[name=card]")) {
      radio.addEventListener("change", showCard);
    }
    showCard();
    // Typing an amount selects "Other".
    custom.addEventListener("input", () => {
      const other = form.querySelector("input[name=amount][value=custom]");
      if (other) other.checked = true;
    });

    let busy = false;
    form.addEventListener("submit", async (event) => {
      if (busy) { event.preventDefault(); return; }
      busy = true;
      button.disabled = true;
      if (!wantsNewCard()) {
        say(status, "Paying with your saved card…");
        return; // the browser submits the form
      }
      event.preventDefault();
      say(status, "Checking your card…");
      try {
        const response = await fetch("/api/v1/credits/payment-method/setup", {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-CSRFToken": csrfToken(form), "Accept": "application/json" },
        });
        const body = await response.json().catch(() => ({}));
        if (!response.ok) throw new Error((body.error && body.error.message) || "Card payments are unavailable.");
        const result = await stripe.confirmCardSetup(body.client_secret, { payment_method: { card } });
        if (result.error) throw new Error(result.error.message || "The card could not be used.");
        const pm = result.setupIntent.payment_method;
        form.querySelector("input[name=payment_method_id]").value = typeof pm === "string" ? pm : pm.id;
        say(status, "Paying…");
        form.submit();
      } catch (err) {
        say(status, err.message || String(err), true);
        button.disabled = false;
        busy = false;
      }
    });
  }

  function setUpConfirm(box) {
    if (typeof Stripe === "undefined") return;
    const stripe = Stripe(box.dataset.publishableKey);
    const status = box.querySelector("#payment-status");
    const button = box.querySelector("#authenticate-button");
    const check = document.getElementById("check-form");
    button.addEventListener("click", async () => {
      button.disabled = true;
      say(status, "Waiting for your bank…");
      // After Stripe's off-session `authentication_required` the saved card is confirmed
      // again on-session (SPEC M4); otherwise the PaymentIntent already has its card.
      const result = box.dataset.paymentMethod
        ? await stripe.confirmCardPayment(box.dataset.clientSecret, {
            payment_method: box.dataset.paymentMethod,
          })
        : await stripe.confirmCardPayment(box.dataset.clientSecret);
      if (result.error) say(status, result.error.message || "Authentication failed.", true);
      else say(status, "Checking the payment…");
      check.submit(); // the server re-reads the payment at Stripe and shows the result
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("add-credits-form");
    if (form) setUpAddCredits(form);
    const box = document.getElementById("confirm-payment");
    if (box) setUpConfirm(box);
  });
})();
