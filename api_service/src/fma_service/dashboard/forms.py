"""The dashboard's two forms; they only check input, the services decide."""

from django import forms

from fma_django import lifecycle


class PublishForm(forms.Form):
    aggregate = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    version = forms.CharField(max_length=255, label="Version")


class StateForm(forms.Form):
    """Pause, resume or stop: ``fma_django.lifecycle`` decides what the experiment's state allows."""

    state = forms.ChoiceField(choices=[(s, s) for s in lifecycle.REQUESTABLE])
    reason = forms.CharField(max_length=400, required=False, label="Reason")
