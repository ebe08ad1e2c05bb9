from django.urls import path

from subscriptions import views

urlpatterns = [
    path("", views.subscription_center, name="subscriptions"),
    path("coding-plans/purchase/", views.purchase, name="coding-plans-purchase"),
    path("coding-plans/<int:subscription_id>/", views.detail, name="coding-plan-detail"),
    path("coding-plans/<int:subscription_id>/cancel/", views.cancel, name="coding-plan-cancel"),
    path("coding-plans/<int:subscription_id>/resume/", views.resume, name="coding-plan-resume"),
    path("coding-plans/plans/<str:plan_id>/notify/", views.save_intent, name="coding-plans-notify"),
    path(
        "coding-plans/plans/<str:plan_id>/notify/withdraw/",
        views.withdraw_intent,
        name="coding-plans-notify-withdraw",
    ),
]
