"""covidct.data.synth"""
