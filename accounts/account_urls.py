from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.account, name="account"),
    path("delete/", views.delete_account_view, name="account-delete"),
    path("tokens/", views.create_token, name="account-token-create"),
    path("tokens/<int:token_id>/revoke/", views.revoke_token, name="account-token-revoke"),
    # SPEC A1, A2, E1 (issue 19)
    path("password/", views.PasswordChangeView.as_view(), name="account-password"),
    path("email/", views.email_change, name="account-email"),
    path("email/confirm/<str:token>/", views.email_change_confirm, name="account-email-confirm"),
    path("verify/resend/", views.resend_verification, name="account-verify-resend"),
    path("verify/<str:token>/", views.verify_email, name="account-verify"),
    path("notifications/", views.notifications, name="account-notifications"),
]
