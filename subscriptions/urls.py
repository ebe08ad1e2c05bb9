from django.urls import path

from subscriptions import views

urlpatterns = [
    path("", views.subscription_center, name="subscriptions"),
]
