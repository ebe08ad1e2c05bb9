from accounts.models import ApiToken


def tokens_for(user) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=user).order_by("-created_at"))
