"""covidct.serve"""
