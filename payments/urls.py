from django.urls import path

from payments import views

# Mounted under /credits/ next to billing's page (codingplans/urls.py).
urlpatterns = [
    path("pay/", views.pay, name="credits-pay"),
    path("payment-method/remove/", views.remove_card, name="credits-remove-card"),
    path("payments/<int:payment_id>/confirm/", views.confirm, name="credits-payment-confirm"),
]
