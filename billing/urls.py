from django.urls import path

from billing import views

urlpatterns = [
    path("", views.credits, name="credits"),
    path("auto-top-up/", views.auto_top_up, name="credits-auto-top-up"),
]
