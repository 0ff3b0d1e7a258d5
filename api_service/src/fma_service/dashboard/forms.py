"""The dashboard's two forms; they only check input, the services decide."""

from django import forms


class PublishForm(forms.Form):
    aggregate = forms.IntegerField(min_value=1, widget=forms.HiddenInput)
    version = forms.CharField(max_length=255, label="Version")


class AggregationForm(forms.Form):
    allowed = forms.TypedChoiceField(
        choices=[("1", "resume"), ("0", "pause")], coerce=lambda value: value == "1"
    )
