from django.urls import path

from byok import views

urlpatterns = [
    path("", views.byok_page, name="byok"),
    path("add/", views.add_key, name="byok-add"),
    path("<int:key_id>/replace/", views.replace_key, name="byok-replace"),
    path("<int:key_id>/toggle/", views.toggle_key, name="byok-toggle"),
    path("<int:key_id>/delete/", views.delete_key, name="byok-delete"),
    path("<int:key_id>/test/", views.test_key, name="byok-test"),
]
