"""The ward workflow: admit, associate and swap devices, transfer, discharge, from the ward's own
pages (acts.py: the acts; views.py and forms.py: the pages)."""
