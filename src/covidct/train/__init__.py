"""covidct.train"""
