import django_filters

from monitoring.models import Agent, AgentRole, AgentState


class AgentFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=AgentState.choices)
    role = django_filters.ChoiceFilter(choices=AgentRole.choices)

    class Meta:
        model = Agent
        fields = ["state", "role"]
